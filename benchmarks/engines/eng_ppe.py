"""concurrent.futures.ProcessPoolExecutor(2) (fork)."""

from __future__ import annotations

from concurrent.futures import Executor

from engines import common
from engines.executor import ExecutorEngine

NAME = "ppe"
LABEL = "ProcessPoolExecutor(2) [fork]"
STARTUP_CODE = f"""
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from engines.tasks import square
ex = ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
print("{common.STARTUP_MARKER}", ex.submit(square, 3).result(), flush=True)
ex.shutdown()
"""


class Engine(ExecutorEngine):
    nested_na = "a worker cannot submit to its own pool: n/a"

    def make(self) -> Executor:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))

    def shutdown(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)
