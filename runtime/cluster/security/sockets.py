"""CURVE setup of sockets and the limits every network-facing socket gets.

Owns making a socket a CURVE server (`secure_server`, a daemon's bound
sockets) or client (`secure_client`, clients and daemons' outgoing
connections), the largest frame a peer may send (`set_max_message`,
`client_max_message`, `$LUCIDITY_MAX_MESSAGE_MB`) and the most workers a node
may announce (`MAX_NODE_WORKERS`).

It only sets options on sockets it is given: it creates, binds and connects
none, and reads no key file (a loaded `Keys` comes from `keys`).
"""

from __future__ import annotations

import os
from typing import Any

import zmq

from lucidity.cluster.security.keys import SERVER, Keys
from lucidity.errors import KeysError

__all__ = [
    "DEFAULT_MAX_MESSAGE_MB",
    "MAX_MESSAGE_ENV",
    "MAX_NODE_WORKERS",
    "client_max_message",
    "secure_client",
    "secure_server",
    "set_max_message",
]

# The most workers a node may announce: a heartbeat's `workers` sizes every
# client's fanout window, so a peer must not make it unbounded.
MAX_NODE_WORKERS = 1024
MAX_MESSAGE_ENV = "LUCIDITY_MAX_MESSAGE_MB"
DEFAULT_MAX_MESSAGE_MB = 1024


def secure_server(sock: zmq.Socket[Any], keys: Keys) -> None:
    """Make `sock` (before it binds) a CURVE server with the cluster's keypair."""
    if keys.server_secret is None:
        raise KeysError(
            f"keys folder {keys.path} has no {SERVER}.key_secret: it is a member's "
            "folder, which clients use; daemons need the cluster's folder"
        )
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True


def secure_client(sock: zmq.Socket[Any], keys: Keys) -> None:
    """Make `sock` (before it connects) a CURVE client with the member keypair."""
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
    sock.curve_serverkey = keys.server_public


def set_max_message(sock: zmq.Socket[Any], max_mb: int) -> None:
    """Disconnect a peer that sends a frame larger than `max_mb` MiB."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_mb * 1024 * 1024)


def client_max_message() -> int:
    text = os.environ.get(MAX_MESSAGE_ENV, "")
    try:
        value = int(text) if text else DEFAULT_MAX_MESSAGE_MB
    except ValueError:
        value = DEFAULT_MAX_MESSAGE_MB
    return max(1, value)
