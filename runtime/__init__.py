"""lucidity: mark a function `@job`, run `lucidity-gen`, run it on a cluster.

The public surface is this module's `__all__`; every other name is internal.
Importing `lucidity` loads neither libcst, jinja2 nor black.
"""

from __future__ import annotations

import os
import sys

from lucidity._decorator import job
from lucidity._options import JobOptions, OptionError
from lucidity.errors import (
    AuthenticationError,
    ClusterError,
    FuelExhaustedError,
    JobCancelledError,
    JobTimeoutError,
    LucidityError,
    MemoryLimitError,
    NoNodesError,
    RemoteError,
)
from lucidity.handle import Job

__all__ = [
    "AuthenticationError",
    "ClusterError",
    "FuelExhaustedError",
    "Job",
    "JobCancelledError",
    "JobOptions",
    "JobTimeoutError",
    "LucidityError",
    "MemoryLimitError",
    "NoNodesError",
    "OptionError",
    "RemoteError",
    "connect",
    "job",
    "shutdown",
]

__version__ = "0.1.0"


def connect(
    address: str | None = None,
    keys: str | os.PathLike[str] | None = None,
    *,
    engine: str | None = None,
) -> None:
    """Use the cluster whose control daemon listens at `address`.

    Call before the first job; without it (and without `LUCIDITY_CONTROL`),
    an embedded cluster starts on first use. `keys` is the cluster's keys
    folder (from `lucidity keygen`), or a member's; default `$LUCIDITY_KEYS`.
    `engine="ray"` runs the jobs on Ray instead (as `LUCIDITY_ENGINE=ray`
    does): `address` is then a Ray address, default `$RAY_ADDRESS`, and
    with neither a local Ray starts.
    """
    from lucidity import _stubs

    if engine is not None and engine not in _stubs.ENGINES:
        raise ValueError(
            f"lucidity.connect(engine={engine!r}): allowed engines are "
            + ", ".join(repr(e) for e in _stubs.ENGINES)
        )
    if engine is None and address is not None and address.startswith(("tcp:", "ipc:")):
        engine = "zmq"  # a control daemon's address, whatever LUCIDITY_ENGINE says
    shutdown()
    _stubs._engine, _stubs._get_client = engine, None
    if _stubs.engine_name() == "ray":
        from lucidity.ray_engine import connect as _connect_ray

        _connect_ray(address)
        return
    if address is None:
        raise ValueError("lucidity.connect(): give the control address (tcp://...)")
    from lucidity.client import connect as _connect

    _connect(address, keys)


def shutdown() -> None:
    """Close this process's client (and its embedded cluster, if any)."""
    from lucidity.client import shutdown as _shutdown

    _shutdown()
    ray_engine = sys.modules.get("lucidity.ray_engine")
    if ray_engine is not None:
        ray_engine.shutdown()
