"""The client: how a process (an app, or a job inside a worker) reaches the
cluster. `core` holds it; this package re-exports the names others use.

Nothing here imports `lucidity.cluster.node`: the client and the node meet only
on the wire (`lucidity.cluster.wire`).
"""

from lucidity.cluster.client.core import (
    MAX_SYSTEM_ATTEMPTS,
    Client,
    connect,
    encode_callable,
    get_client,
    shutdown,
)

__all__ = [
    "MAX_SYSTEM_ATTEMPTS",
    "Client",
    "connect",
    "encode_callable",
    "get_client",
    "shutdown",
]
