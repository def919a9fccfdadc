"""Ray, local (num_cpus=2), loopback, no dashboard."""

from __future__ import annotations

import os
from typing import Any

from engines import common

# Without it Ray resolves 127.0.0.1 to the machine's network address and
# listens there; read when Ray is imported (here and in the start-up child).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
from engines.tasks import echo, square

NAME = "ray"
LABEL = "ray local (num_cpus=2)"
FANOUT_CAP = 20_000
INIT = dict(
    num_cpus=2,
    include_dashboard=False,
    _node_ip_address="127.0.0.1",
    log_to_driver=False,
    configure_logging=False,
)
STARTUP_CODE = f"""
import ray
from engines.tasks import square
ray.init(**{INIT!r})
f = ray.remote(square)
print("{common.STARTUP_MARKER}", ray.get(f.remote(3)), flush=True)
ray.shutdown()
"""


class Engine:
    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes

    def setup(self) -> None:
        import ray

        self.ray = ray
        ray.init(**INIT)
        self.square = ray.remote(square)
        self.echo = ray.remote(echo)
        sq = self.square

        @ray.remote
        def pythagorean(a: int, b: int) -> float:
            return float(sum(ray.get([sq.remote(a), sq.remote(b)])) ** 0.5)

        self.pyth = pythagorean
        ray.get([self.square.remote(i) for i in range(4)])

    def teardown(self) -> None:
        self.ray.shutdown()

    def latency(self) -> dict[str, Any]:
        s = self.sizes
        data = common.measure_latency(
            lambda x: self.ray.get(self.square.remote(x)), s.latency_n, s.latency_warmup
        )
        data["how"] = "ray.get(square.remote(x))"
        return data

    def fanout(self) -> dict[str, Any]:
        n = self.sizes.fanout_for(FANOUT_CAP)
        data = common.measure_fanout(
            lambda k: self.ray.get([self.square.remote(i) for i in range(k)]), n
        )
        data["how"] = "ray.get([square.remote(i) for i in range(n)])"
        return data

    def nested(self) -> dict[str, Any]:
        def run(pairs: list[tuple[int, int]]) -> list[float]:
            return self.ray.get([self.pyth.remote(a, b) for a, b in pairs])

        data = common.measure_nested(run, self.sizes.nested_n)
        data["how"] = (
            "remote pythagorean calls ray.get on 2 square tasks (ray lends the "
            "blocked worker's CPU and may start extra worker processes)"
        )
        return data

    def payload(self) -> dict[str, Any]:
        data = common.measure_payload(
            lambda a: self.ray.get(self.echo.remote(a)), self.sizes.payload_reps
        )
        data["how"] = (
            "ray.get(echo.remote(arr)); the result is a zero-copy read-only view "
            "of the shared-memory object store"
        )
        return data
