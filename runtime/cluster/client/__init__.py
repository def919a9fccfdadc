"""The client: how a process (an app, or a job inside a worker) reaches the
cluster, and the ZeroMQ engine it implements for `lucidity.engine`.

This package is the module `lucidity.engine.ENGINES["zmq"]` names: it
provides `connect`, `get_engine` and `shutdown`. `engine` holds the `Engine`
facade; `core` the `Client`; the other modules one role of the client each
(see their docstrings).

Nothing here imports `lucidity.cluster.node`: the client and the node meet only
on the wire (`lucidity.cluster.wire`).
"""

from lucidity.cluster.client.core import (
    MAX_SYSTEM_ATTEMPTS,
    Client,
    encode_callable,
    get_client,
    shutdown,
)
from lucidity.cluster.client.engine import (
    ZmqEngine,
    connect,
    connection,
    get_engine,
    restore_connection,
    wait_for_nodes,
)

__all__ = [
    "MAX_SYSTEM_ATTEMPTS",
    "Client",
    "ZmqEngine",
    "connect",
    "connection",
    "encode_callable",
    "get_client",
    "get_engine",
    "restore_connection",
    "shutdown",
    "wait_for_nodes",
]
