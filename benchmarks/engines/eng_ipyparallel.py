"""ipyparallel Cluster(n=2), load-balanced view, loopback."""

from __future__ import annotations

from typing import Any

from engines import common
from engines.tasks import echo, square

NAME = "ipyparallel"
LABEL = "ipyparallel Cluster(n=2), load-balanced view"
FANOUT_CAP = 2_000
STARTUP_CODE = f"""
import ipyparallel as ipp
from engines.tasks import square
cluster = ipp.Cluster(n=2, controller_ip="127.0.0.1", engine_timeout=60, log_level=40)
rc = cluster.start_and_connect_sync(activate=False)
print("{common.STARTUP_MARKER}", rc.load_balanced_view().apply_sync(square, 3), flush=True)
rc.close(); cluster.stop_cluster_sync()
"""


class Engine:
    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes

    def setup(self) -> None:
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(
            n=2, controller_ip="127.0.0.1", engine_timeout=60, log_level=40
        )
        self.rc = self.cluster.start_and_connect_sync(activate=False)
        self.rc.wait_for_engines(2, timeout=60)
        self.lview = self.rc.load_balanced_view()

    def teardown(self) -> None:
        self.rc.close()
        self.cluster.stop_cluster_sync()

    def latency(self) -> dict[str, Any]:
        s = self.sizes
        data = common.measure_latency(
            lambda x: self.lview.apply_sync(square, x), s.latency_n, s.latency_warmup
        )
        data["how"] = "lview.apply_sync(square, x)"
        return data

    def fanout(self) -> dict[str, Any]:
        n = self.sizes.fanout_for(FANOUT_CAP)
        data = common.measure_fanout(lambda k: self.lview.map_sync(square, range(k)), n)
        data["how"] = (
            "lview.map_sync(square, range(n)) (chunksize=1: one task per item)"
        )
        return data

    nested_na = (
        "an engine runs one task at a time and cannot secede: parents waiting on "
        "children hold both engines (deadlock)"
    )

    def payload(self) -> dict[str, Any]:
        data = common.measure_payload(
            lambda a: self.lview.apply_sync(echo, a), self.sizes.payload_reps
        )
        data["how"] = "lview.apply_sync(echo, arr)"
        return data
