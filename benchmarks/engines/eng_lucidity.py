"""lucidity: the embedded cluster (a control and 2 nodes x 1 worker), via benchapp's stubs."""

from __future__ import annotations

from typing import Any

from engines import common

NAME = "lucidity"
LABEL = "lucidity embedded (2 nodes x 1 worker)"
STARTUP_CODE = (
    "from benchapp.bench_jobs import square_remote\n"
    "r = square_remote(3)\n"
    f"print('{common.STARTUP_MARKER}', r, flush=True)\n"
)


class Engine:
    # What each workload runs, for the report (the Ray engine's differ).
    HOW = {
        "latency": "square_remote(x)",
        "fanout": "square_remote_fanout(range(n))",
        "nested": "pythagorean_remote_fanout(pairs); each parent awaits 2 "
        "square_remote_async",
        "payload": "echo_remote(arr)",
    }

    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes

    def setup(self) -> None:
        from benchapp import bench_jobs

        self.jobs = bench_jobs
        assert bench_jobs.square_remote(3) == 9  # starts the embedded cluster
        from lucidity.cluster.client import get_client

        nodes = get_client().nodes(timeout=10)
        self.notes = [f"nodes seen by the client: {len(nodes)}"]

    def teardown(self) -> None:
        import lucidity

        lucidity.shutdown()

    def latency(self) -> dict[str, Any]:
        s = self.sizes
        data = common.measure_latency(
            self.jobs.square_remote, s.latency_n, s.latency_warmup
        )
        data["how"] = self.HOW["latency"]
        return data

    def fanout(self) -> dict[str, Any]:
        self.jobs.square_remote_fanout(range(1000))  # warm-up
        data = common.measure_fanout(
            lambda n: self.jobs.square_remote_fanout(range(n)), self.sizes.fanout_n
        )
        data["how"] = self.HOW["fanout"]
        return data

    def nested(self) -> dict[str, Any]:
        data = common.measure_nested(
            self.jobs.pythagorean_remote_fanout, self.sizes.nested_n
        )
        data["how"] = self.HOW["nested"]
        return data

    def payload(self) -> dict[str, Any]:
        data = common.measure_payload(self.jobs.echo_remote, self.sizes.payload_reps)
        data["how"] = self.HOW["payload"]
        return data
