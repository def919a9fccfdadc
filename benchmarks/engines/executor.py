"""What the concurrent.futures-style engines (ProcessPoolExecutor, loky)
share: the same workloads through `submit` and `map`; each engine module says
only how to make its executor and how to shut it down."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from engines import common
from engines.tasks import echo, square

FANOUT_CAP = 20_000


class ExecutorEngine:
    """Subclasses define `make()` and may override `shutdown()`."""

    setup_timeout_s = 30.0
    nested_na = "n/a"

    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes

    def make(self) -> Executor:
        raise NotImplementedError

    def shutdown(self) -> None:
        self.ex.shutdown(wait=True)

    def setup(self) -> None:
        self.ex = self.make()
        self.ex.submit(square, 3).result(self.setup_timeout_s)

    def teardown(self) -> None:
        self.shutdown()

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

    def payload(self) -> dict[str, Any]:
        data = common.measure_payload(
            lambda a: self.ex.submit(echo, a).result(), self.sizes.payload_reps
        )
        data["how"] = "ex.submit(echo, arr).result()"
        return data
