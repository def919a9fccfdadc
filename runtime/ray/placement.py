"""Which Ray task a job starts as: its remote function, node affinity and code.

`Placement.handle(...)` answers with a Ray remote function, `.options()`-ed
once per kind and kept: a single job or a batch; limits (`memory`, `fuel`)
or not, which run in a single-use worker (`max_calls=1`); where it goes
(`local` and an explicit `node` pin the task to a node, hard affinity;
otherwise `fanout` picks a live node round-robin or at random, soft
affinity: Ray may move it if that node is gone; with one node, Ray places
it); and the runtime_env that ships its code (`lucidity.ray.shipping`).
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lucidity._options import JobOptions
from lucidity.cluster.client.placement import MAX_SYSTEM_ATTEMPTS
from lucidity.engine import NodeInfo, Target
from lucidity.ray import task
from lucidity.ray.shipping import CodeShipper, ray_nodes

__all__ = ["NODES_TTL_S", "Placement"]

# The node list is read from Ray's GCS at most this often (placement, and
# `RayEngine.nodes`).
NODES_TTL_S = 1.0


class Placement:
    """The Ray remote functions jobs start as; see the module docstring."""

    def __init__(self, my_node: str) -> None:
        self.my_node = my_node
        retries = MAX_SYSTEM_ATTEMPTS - 1
        self._tasks = {
            (batch, limited): ray.remote(
                num_cpus=1,
                max_retries=retries,
                # 0: unlimited; 1: a fresh worker for each job with limits.
                max_calls=1 if limited else 0,
            )(task.run_batch if batch else task.run_job)
            for batch in (False, True)
            for limited in (False, True)
        }
        self._handles: dict[tuple[Any, ...], Any] = {}
        self._code = CodeShipper()
        self._nodes: list[NodeInfo] = []
        self._nodes_at = 0.0
        self._rr = itertools.count(random.randrange(1 << 16))

    def alive(self) -> list[NodeInfo]:
        """Ray's live nodes, read from its GCS at most every NODES_TTL_S (a
        read costs ~1 ms: the fanout driver asks before every batch)."""
        now = time.monotonic()
        if now - self._nodes_at > NODES_TTL_S or not self._nodes:
            self._nodes = ray_nodes()
            self._nodes_at = now
        return self._nodes

    def _place(
        self, options: JobOptions, local: bool, node: str | None
    ) -> tuple[str, bool] | None:
        """(node id, soft) for the task's affinity, or None: Ray places it."""
        if local:
            return (self.my_node, False)
        if node is not None:
            return (node, False)  # pinned, as the protocol says
        nodes = self.alive()
        if len(nodes) <= 1:
            return None
        if options.fanout == "random":
            return (random.choice(nodes).id, True)
        return (nodes[next(self._rr) % len(nodes)].id, True)

    def handle(
        self,
        target: Target,
        options: JobOptions,
        batch: bool,
        local: bool,
        node: str | None,
    ) -> Any:
        """The remote function to start this job (or batch) with."""
        limited = options.memory is not None or options.fuel is not None
        place = self._place(options, local, node)
        env = self._code.env(target)
        key = (batch, limited, place, env[0] if env else None)
        handle = self._handles.get(key)
        if handle is None:
            handle = self._tasks[batch, limited]
            extra: dict[str, Any] = {}
            if place is not None:
                extra["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                    node_id=place[0], soft=place[1]
                )
            if env is not None:
                extra["runtime_env"] = env[1]
            if extra:
                handle = handle.options(**extra)
            self._handles[key] = handle
        return handle
