"""loky's reusable executor, 2 workers (loky-spawned, cloudpickle)."""

from __future__ import annotations

from typing import Any

from engines import common
from engines.tasks import echo, square

NAME = "loky"
LABEL = "loky reusable executor(2)"
FANOUT_CAP = 20_000
STARTUP_CODE = f"""
from loky import get_reusable_executor
from engines.tasks import square
ex = get_reusable_executor(max_workers=2)
print("{common.STARTUP_MARKER}", ex.submit(square, 3).result(), flush=True)
ex.shutdown(wait=True)
"""


class Engine:
    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes

    def setup(self) -> None:
        from loky import get_reusable_executor

        self.ex = get_reusable_executor(max_workers=2)
        self.ex.submit(square, 3).result(60)

    def teardown(self) -> None:
        self.ex.shutdown(wait=True)

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

    nested_na = "no nested submission from workers: n/a"

    def payload(self) -> dict[str, Any]:
        data = common.measure_payload(
            lambda a: self.ex.submit(echo, a).result(), self.sizes.payload_reps
        )
        data["how"] = "ex.submit(echo, arr).result()"
        return data
