"""lucidity's pytest plugin: real clusters as fixtures for users' test suites.

Loaded by pytest wherever lucidity is installed (the `pytest11` entry point
"lucidity"), as `celery.contrib.pytest` is for Celery:

* `lucidity_cluster` (session): a private cluster of real daemons, a control
  and `nodes` nodes on ipc sockets in a 0700 folder, as the embedded cluster
  is; this process is connected to it for the session, and the connection
  it had before is put back after. It yields a `LucidityCluster`.
* `lucidity_nodes` (per test): a factory, `lucidity_nodes(n, workers=1)`,
  of a fresh private cluster of `n` nodes that this process is connected to
  until the test ends (then the connection of before the test comes back).
* `lucidity_cluster_options` (session): override it in a conftest.py to size
  the session's cluster: `{"nodes": 2, "workers": 1}`.

Every daemon started here stops when its fixture ends, and with this process
whatever way it ends (each daemon's stdin is a pipe from here).
Importing this module loads neither the client nor ZeroMQ (only the light
`lucidity` package): a pytest run that uses none of these fixtures pays
next to nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from lucidity.cluster.embedded import LocalCluster
    from lucidity.engine import NodeInfo

__all__ = ["LucidityCluster"]

# Daemons start in well under a second; a loaded CI machine gets room.
JOIN_TIMEOUT_S = 30.0


@dataclass
class LucidityCluster:
    """A running private cluster: `address` of its control, its `nodes`
    (as the engine sees them), the `pids` of its daemons."""

    address: str
    nodes: list[NodeInfo]
    pids: list[int]
    _local: LocalCluster | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._local is not None:
            self._local.stop()
            self._local = None


def _start(nodes: int, workers: int | None) -> LucidityCluster:
    """Start a cluster, connect this process to it, wait for every node."""
    import lucidity
    from lucidity.cluster.client import wait_for_nodes
    from lucidity.cluster.embedded import start_embedded

    if nodes < 1:
        raise ValueError(f"lucidity_nodes: nodes must be at least 1, not {nodes}")
    local = start_embedded(nodes=nodes, workers=workers)
    try:
        assert local.control is not None
        # Its daemons run without keys on their private 0700 ipc folder, as
        # the embedded cluster's do.
        lucidity.connect(local.control, insecure=True)
        joined = wait_for_nodes(nodes, JOIN_TIMEOUT_S)
    except BaseException:
        local.stop()
        raise
    pids = [d.proc.pid for d in local.daemons]
    return LucidityCluster(local.control, joined, pids, local)


@pytest.fixture(scope="session")
def lucidity_cluster_options() -> Mapping[str, Any]:
    """The session cluster's size: override in a conftest.py."""
    return {"nodes": 2, "workers": 1}


@pytest.fixture(scope="session")
def lucidity_cluster(
    lucidity_cluster_options: Mapping[str, Any],
) -> Iterator[LucidityCluster]:
    """A private cluster of real daemons for the session, connected to."""
    from lucidity.engine import connection, restore_connection

    saved = connection()
    cluster = _start(
        int(lucidity_cluster_options.get("nodes", 2)),
        lucidity_cluster_options.get("workers", 1),
    )
    try:
        yield cluster
    finally:
        restore_connection(saved)
        cluster.stop()


@pytest.fixture
def lucidity_nodes() -> Iterator[Callable[..., LucidityCluster]]:
    """`lucidity_nodes(n, workers=1)`: a fresh cluster of `n` nodes for this
    test, connected to; the previous connection comes back after it."""
    from lucidity.engine import connection, restore_connection

    saved = connection()
    made: list[LucidityCluster] = []

    def make(nodes: int, workers: int | None = 1) -> LucidityCluster:
        made.append(_start(nodes, workers))
        return made[-1]

    try:
        yield make
    finally:
        restore_connection(saved)
        for cluster in reversed(made):
            cluster.stop()
