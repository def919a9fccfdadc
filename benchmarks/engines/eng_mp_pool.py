"""multiprocessing.Pool(2) (fork): apply, map with default chunking, apply of the array."""

from __future__ import annotations

from typing import Any

from engines import common
from engines.tasks import echo, square

NAME = "mp_pool"
LABEL = "multiprocessing.Pool(2) [fork]"
STARTUP_CODE = f"""
import multiprocessing as mp
from engines.tasks import square
p = mp.get_context("fork").Pool(2)  # not the default from Python 3.14
print("{common.STARTUP_MARKER}", p.apply(square, (3,)), flush=True)
p.terminate(); p.join()
"""


class Engine:
    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes

    def setup(self) -> None:
        import multiprocessing as mp

        self.pool = mp.get_context("fork").Pool(2)
        self.pool.apply(square, (3,))

    def teardown(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def latency(self) -> dict[str, Any]:
        s = self.sizes
        data = common.measure_latency(
            lambda x: self.pool.apply(square, (x,)), s.latency_n, s.latency_warmup
        )
        data["how"] = "pool.apply(square, (x,))"
        return data

    def fanout(self) -> dict[str, Any]:
        data = common.measure_fanout(
            lambda n: self.pool.map(square, range(n)), self.sizes.fanout_n
        )
        n = self.sizes.fanout_n
        data["how"] = f"pool.map(square, range(n)), default chunksize ({-(-n // 8)})"
        one = common.measure_fanout(
            lambda k: self.pool.map(square, range(k), chunksize=1), min(n, 20_000)
        )
        data["extra"] = {f"map chunksize=1 (n={one['n']}) jobs/s": one["per_s"]}
        return data

    nested_na = "apply_async from inside a worker: n/a"

    def payload(self) -> dict[str, Any]:
        data = common.measure_payload(
            lambda a: self.pool.apply(echo, (a,)), self.sizes.payload_reps
        )
        data["how"] = "pool.apply(echo, (arr,))"
        return data
