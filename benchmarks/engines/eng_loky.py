"""loky's reusable executor, 2 workers (loky-spawned, cloudpickle)."""

from __future__ import annotations

from concurrent.futures import Executor

from engines import common
from engines.executor import ExecutorEngine

NAME = "loky"
LABEL = "loky reusable executor(2)"
STARTUP_CODE = f"""
from loky import get_reusable_executor
from engines.tasks import square
ex = get_reusable_executor(max_workers=2)
print("{common.STARTUP_MARKER}", ex.submit(square, 3).result(), flush=True)
ex.shutdown(wait=True)
"""


class Engine(ExecutorEngine):
    setup_timeout_s = 60.0
    nested_na = "no nested submission from workers: n/a"

    def make(self) -> Executor:
        from loky import get_reusable_executor

        return get_reusable_executor(max_workers=2)  # type: ignore[no-any-return]
