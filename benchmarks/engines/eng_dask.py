"""dask.distributed LocalCluster: 2 worker processes x 1 thread, loopback."""

from __future__ import annotations

from typing import Any

from engines import common
from engines.tasks import echo, square

NAME = "dask"
LABEL = "dask.distributed LocalCluster(2 procs x 1 thread)"
FANOUT_CAP = 5_000
STARTUP_CODE = f"""
from dask.distributed import Client, LocalCluster
from engines.tasks import square
if __name__ == "__main__":
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    client = Client(cluster)
    print("{common.STARTUP_MARKER}", client.submit(square, 3, pure=False).result(), flush=True)
    client.close(); cluster.close()
"""


def pythagorean(a: int, b: int) -> float:
    from dask.distributed import worker_client

    with worker_client() as c:  # secedes this worker thread while it waits
        fa, fb = c.submit(square, a, pure=False), c.submit(square, b, pure=False)
        return float((fa.result() + fb.result()) ** 0.5)


class Engine:
    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes

    def setup(self) -> None:
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(2, timeout=60)

    def teardown(self) -> None:
        self.client.close(timeout=20)
        self.cluster.close(timeout=20)

    def latency(self) -> dict[str, Any]:
        s = self.sizes
        data = common.measure_latency(
            lambda x: self.client.submit(square, x, pure=False).result(),
            s.latency_n,
            s.latency_warmup,
        )
        data["how"] = "client.submit(square, x, pure=False).result()"
        return data

    def fanout(self) -> dict[str, Any]:
        n = self.sizes.fanout_for(FANOUT_CAP)
        data = common.measure_fanout(
            lambda k: self.client.gather(self.client.map(square, range(k), pure=False)),
            n,
        )
        data["how"] = "client.gather(client.map(square, range(n), pure=False))"
        return data

    def nested(self) -> dict[str, Any]:
        def run(pairs: list[tuple[int, int]]) -> list[float]:
            a, b = zip(*pairs, strict=False)
            return self.client.gather(self.client.map(pythagorean, a, b, pure=False))

        data = common.measure_nested(run, self.sizes.nested_n)
        data["how"] = (
            "client.map(pythagorean); each parent uses worker_client() for 2 children"
        )
        return data

    def payload(self) -> dict[str, Any]:
        data = common.measure_payload(
            lambda a: self.client.submit(echo, a, pure=False).result(),
            self.sizes.payload_reps,
        )
        data["how"] = (
            "client.submit(echo, arr, pure=False).result() (array passed inline)"
        )
        return data
