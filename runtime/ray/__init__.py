"""The Ray engine: lucidity's jobs as Ray tasks (`LUCIDITY_ENGINE=ray`).

This package is the module `lucidity.engine.ENGINES["ray"]` names: it
provides `connect`, `get_engine` and `shutdown` for the one `RayEngine` of
a process. `engine` holds the `RayEngine`; `task` what a Ray worker runs;
`shipping` how this process reaches Ray (kept on loopback) and how a job's
code reaches Ray's workers; `timers` the engine's deadline thread; `status`
`lucidity status --engine ray`.

Importing it imports Ray (the `lucidity[ray]` extra); importing `lucidity`
never imports it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from lucidity.ray.engine import RayEngine

__all__ = [
    "RayEngine",
    "connect",
    "connection",
    "get_engine",
    "restore_connection",
    "shutdown",
]

_lock = threading.Lock()
_engine: RayEngine | None = None
# What connect() was given; None: $RAY_ADDRESS, else a local Ray.
_address: str | None = None


def connect(
    address: str | None,
    keys: str | os.PathLike[str] | None = None,
    *,
    insecure: bool = False,
) -> None:
    """Use the Ray cluster at `address` (None: $RAY_ADDRESS, else a local
    Ray); `keys` and `insecure` are lucidity's daemons' and mean nothing to
    Ray (Ray's own authentication applies)."""
    global _address
    shutdown()
    _address = address


def get_engine() -> RayEngine:
    """This process's Ray engine, connected on first use."""
    global _engine
    engine = _engine
    if engine is not None and engine.usable():
        return engine
    with _lock:
        if _engine is None or not _engine.usable():
            _engine = RayEngine(_address)
        return _engine


def shutdown() -> None:
    """Close this process's Ray engine (and the local Ray it started, if any)."""
    global _engine
    with _lock:
        engine, _engine = _engine, None
    if engine is not None and engine.usable():
        engine.close()


def connection() -> str | None:
    """What `connect` set (for `lucidity.engine.restore_connection`)."""
    return _address


def restore_connection(state: Any) -> None:
    global _address
    shutdown()
    _address = state
