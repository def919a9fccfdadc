"""lucidity on Ray: benchapp's generated stubs with LUCIDITY_ENGINE=ray, local Ray
(2 CPUs), loopback; the same work as the raw Ray peer in the same run."""

from __future__ import annotations

import os

from engines import common, eng_lucidity

# Ray reads these when it is imported; the engine's own loopback switch also
# covers it, the environment covers the Ray processes and the start-up child.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ["LUCIDITY_ENGINE"] = "ray"

NAME = "lucidity_ray"
LABEL = "lucidity on Ray (LUCIDITY_ENGINE=ray, local Ray, 2 CPUs)"
STARTUP_CODE = (
    "from benchapp.bench_jobs import square_remote\n"
    "r = square_remote(3)\n"
    f"print('{common.STARTUP_MARKER}', r, flush=True)\n"
)


class Engine(eng_lucidity.Engine):
    """The embedded engine's workloads, on Ray."""

    HOW = {
        "latency": "square_remote(x) on Ray (one task, ray.get)",
        "fanout": "square_remote_fanout(range(n)): batched tasks, ray.wait",
        "nested": "pythagorean_remote_fanout(pairs); each parent awaits 2 "
        "square_remote_async (the wait goes through ray.wait: the CPU is lent)",
        "payload": "echo_remote(arr) on Ray",
    }

    def setup(self) -> None:
        from benchapp import bench_jobs

        self.jobs = bench_jobs
        assert bench_jobs.square_remote(3) == 9  # starts a local Ray
        from lucidity.ray import get_engine

        nodes = get_engine().nodes()
        self.notes = [
            f"Ray nodes: {len(nodes)}, CPUs {sum(n.slots for n in nodes)}, "
            f"addresses {sorted(n.address.rsplit(':', 1)[0] for n in nodes)}"
        ]
