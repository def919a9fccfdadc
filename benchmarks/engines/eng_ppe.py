"""concurrent.futures.ProcessPoolExecutor(2) (fork)."""

from __future__ import annotations

from typing import Any

from engines import common
from engines.tasks import echo, square

NAME = "ppe"
LABEL = "ProcessPoolExecutor(2) [fork]"
FANOUT_CAP = 20_000
STARTUP_CODE = f"""
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from engines.tasks import square
ex = ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
print("{common.STARTUP_MARKER}", ex.submit(square, 3).result(), flush=True)
ex.shutdown()
"""


class Engine:
    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes

    def setup(self) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.ex = ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
        self.ex.submit(square, 3).result(30)

    def teardown(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)

    def latency(self) -> dict[str, Any]:
        s = self.sizes
        data = common.measure_latency(
            lambda x: self.ex.submit(square, x).result(), s.latency_n, s.latency_warmup
        )
        data["how"] = "ex.submit(square, x).result()"
        return data

    def fanout(self) -> dict[str, Any]:
        n = self.sizes.fanout_for(FANOUT_CAP)
        data = common.measure_fanout(lambda k: list(self.ex.map(square, range(k))), n)
        data["how"] = "list(ex.map(square, range(n))) (chunksize=1, the default)"
        return data

    nested_na = "a worker cannot submit to its own pool: n/a"

    def payload(self) -> dict[str, Any]:
        data = common.measure_payload(
            lambda a: self.ex.submit(echo, a).result(), self.sizes.payload_reps
        )
        data["how"] = "ex.submit(echo, arr).result()"
        return data
