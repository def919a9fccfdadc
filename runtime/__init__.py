"""lucidity: mark a function `@job`, run `lucidity-gen`, run it on a cluster.

The public surface is this module's `__all__`; every other name is internal.
Importing `lucidity` loads neither libcst, jinja2 nor black.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

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
    MessageTooLargeError,
    NoNodesError,
    RemoteError,
)
from lucidity.handle import Job

if TYPE_CHECKING:
    from lucidity.executor import Executor

__all__ = [
    "AuthenticationError",
    "ClusterError",
    "Executor",
    "FuelExhaustedError",
    "Job",
    "JobCancelledError",
    "JobOptions",
    "JobTimeoutError",
    "LucidityError",
    "MemoryLimitError",
    "MessageTooLargeError",
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
    insecure: bool = False,
    engine: str | None = None,
) -> None:
    """Use the cluster whose control daemon listens at `address`.

    Call before the first job; without it (and without `LUCIDITY_CONTROL`),
    an embedded cluster starts on first use. `keys` is the cluster's keys
    folder (from `lucidity keygen`), or a member's; default `$LUCIDITY_KEYS`,
    else this user's own (`$XDG_CONFIG_HOME/lucidity/keys`, which daemons
    started without `--keys` use too). `insecure=True`: no keys, for a
    cluster started with `--insecure`. `engine` picks another engine than
    lucidity's own daemons ("zmq"; default `$LUCIDITY_ENGINE`, see
    `lucidity.engine`), for which `address` means what that engine says.
    """
    from lucidity.engine import connect as _connect

    _connect(address, keys, insecure=insecure, engine=engine)


def shutdown() -> None:
    """Close this process's engine (and its embedded cluster, if any)."""
    from lucidity.engine import shutdown as _shutdown

    _shutdown()


def __getattr__(name: str) -> Any:
    # `Executor` on first use: every daemon and worker imports this package,
    # and none of them needs the executor or the engine selector it loads.
    if name == "Executor":
        from lucidity.executor import Executor

        globals()["Executor"] = Executor
        return Executor
    raise AttributeError(f"module 'lucidity' has no attribute {name!r}")
