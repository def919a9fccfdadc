"""The engine seam: the one protocol everything above an engine is written against.

Generated code reaches the runtime through `lucidity._stubs`; `_stubs`, the
fanout driver (`lucidity.fanout`), `Executor`, the joblib backend and the
pytest plugin reach an engine only through `Engine` below and `get_engine()`,
and never import an engine's own modules.

An engine is one object per process. Which one is picked here, once:
`lucidity.connect(..., engine=NAME)`, else `$LUCIDITY_ENGINE`, else "zmq"
(lucidity's own daemons: the control at `lucidity.connect(address)`, else
`$LUCIDITY_CONTROL`, else an embedded cluster started on first use). Each
name in ENGINES is a module that provides three functions:

* `connect(address, keys, *, insecure)`: use this cluster from now on;
* `get_engine() -> Engine`: this process's engine, made on first use;
* `shutdown()`: close it (and whatever it started).

A second engine is one more entry there and one module against `Engine`
(`tests/engines/thread_engine.py` is one, for tests).

This module owns the protocol, its small value types and the choice of
engine. It may import only engine-neutral parts of the package (`Job`,
`JobOptions`, errors); an engine's module is imported by name on first use.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from lucidity._options import JobOptions
from lucidity.handle import Job

__all__ = [
    "ENGINES",
    "ENGINE_ENV",
    "BatchResult",
    "Engine",
    "NodeInfo",
    "Target",
    "connect",
    "connection",
    "engine_name",
    "get_engine",
    "restore_connection",
    "shutdown",
    "target_name",
]

# What a job runs: a reference "pkg.mod:func" (generated code), or a
# picklable callable (the Executor, joblib).
Target = str | Callable[..., Any]

ENGINE_ENV = "LUCIDITY_ENGINE"
# Engine name -> the module implementing it (see the module docstring).
ENGINES: dict[str, str] = {
    "zmq": "lucidity.cluster.client",
    # Ray (the `lucidity[ray]` extra): `address` is a Ray address, default
    # $RAY_ADDRESS, else a local Ray.
    "ray": "lucidity.ray",
}


def target_name(target: Target) -> str:
    """`target` as logs and errors name it: "pkg.mod:func"."""
    if isinstance(target, str):
        return target
    inner = getattr(target, "func", target)  # a functools.partial
    module = getattr(inner, "__module__", None) or "?"
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"{module}:{name}"


@dataclass(frozen=True)
class NodeInfo:
    """One member of the engine's cluster as callers see it.

    `id` is the member's identity: a node restarted on the same address is a
    new member with a new id. `slots` is how many jobs it runs at once.
    """

    id: str
    address: str
    slots: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResult:
    """What one batch of a fanout came back with.

    `values` holds the results of the items before the first failure, in
    order; `failure` is (index in the batch, exception) of the first item that
    failed, if one did (the items after it were not run); `elapsed_s` is how
    long the batch ran where it ran, and `waited_s` how much of that its
    items waited on nested jobs (the driver sizes batches from both).
    """

    values: list[Any]
    failure: tuple[int, BaseException] | None
    elapsed_s: float
    node: str
    waited_s: float = 0.0


@runtime_checkable
class Engine(Protocol):
    """What a job engine does for the layers above it.

    `args` are positional arguments and `kwargs` keyword arguments exactly as
    the caller made them (None: none). `local` asks for this process's own
    node (inside a job: the node running it). `node` (an id of `nodes()`)
    asks for one member; None, or a member gone meanwhile, lets the engine
    place it. Errors are lucidity's (`lucidity.errors`) or the job's own.
    """

    name: str

    def submit(
        self,
        target: Target,
        options: JobOptions,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None = None,
        *,
        local: bool = False,
        node: str | None = None,
    ) -> Job[Any]:
        """Start one job; return its handle at once."""
        ...

    def run(
        self,
        target: Target,
        options: JobOptions,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None = None,
        *,
        local: bool = False,
    ) -> Any:
        """Run one job and wait for its value (the blocking fast path)."""
        ...

    def submit_batch(
        self,
        target: Target,
        options: JobOptions,
        items: Sequence[Any],
        kwargs: Mapping[str, Any] | None = None,
        *,
        node: str | None = None,
        single: bool = False,
    ) -> Future[BatchResult]:
        """Start `target(*item, **kwargs)` (with `single`: `target(item,
        **kwargs)`) for each item, one after another, as one unit of
        placement; its future holds the batch's `BatchResult`, or the error
        that ended the whole batch. The caller waits for it (a fanout).

        `options` apply to each item; a batch of one item whose options have
        a `timeout` or `retries` runs as that one job would (the fanout
        driver sends such jobs one item per batch)."""
        ...

    def nodes(self, timeout: float = 0.0) -> list[NodeInfo]:
        """The live members; waits up to `timeout` s for a first one."""
        ...

    def cancel(self, job: Job[Any]) -> None:
        """Stop `job` wherever it runs (it may already have ended)."""
        ...

    def close(self) -> None:
        """Release everything the engine holds in this process."""
        ...


# ---- the process's engine ------------------------------------------------

_lock = threading.Lock()
# The engine `connect(engine=...)` chose; None: $LUCIDITY_ENGINE, else "zmq".
_chosen: str | None = None
# The chosen engine's `get_engine`, once looked up (a hot path: every call
# of a generated function goes through it).
_getter: Callable[[], Engine] | None = None


def engine_name() -> str:
    """The name of this process's engine; raises naming the allowed ones."""
    name = _chosen or os.environ.get(ENGINE_ENV) or "zmq"
    if name not in ENGINES:
        allowed = ", ".join(repr(e) for e in ENGINES)
        raise ValueError(f"{ENGINE_ENV}={name!r} is not an engine; allowed: {allowed}")
    return name


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(ENGINES[name])
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "lucidity":
            raise
        raise ModuleNotFoundError(
            f'the {name} engine needs {exc.name}: pip install "lucidity[{name}]"',
            name=exc.name,
        ) from None


def get_engine() -> Engine:
    """This process's engine, made on first use (see the module docstring)."""
    global _getter
    getter = _getter
    if getter is None:
        with _lock:
            if _getter is None:
                _getter = _module(engine_name()).get_engine
            getter = _getter
    return getter()


def connect(
    address: str | None,
    keys: str | os.PathLike[str] | None = None,
    *,
    insecure: bool = False,
    engine: str | None = None,
) -> None:
    """`lucidity.connect`: use `engine` (None: as before) from now on, at
    `address`; the engine in use until now is shut down first."""
    global _chosen, _getter
    if engine is not None and engine not in ENGINES:
        allowed = ", ".join(repr(e) for e in ENGINES)
        raise ValueError(
            f"lucidity.connect(engine={engine!r}): allowed engines are {allowed}"
        )
    shutdown()
    with _lock:
        if engine is not None:
            _chosen = engine
        _getter = None
    _module(engine_name()).connect(address, keys, insecure=insecure)


def shutdown() -> None:
    """Close every engine this process has loaded (and what it started)."""
    for name in ENGINES.values():
        module = sys.modules.get(name)
        if module is not None:
            module.shutdown()


def connection() -> tuple[str | None, Any]:
    """What `connect` last set in this process: the engine chosen, and what
    that engine's module keeps of it (for the pytest plugin, which puts it
    back after its own cluster)."""
    module = sys.modules.get(ENGINES[engine_name()])
    saved = getattr(module, "connection", None)
    return _chosen, None if saved is None else saved()


def restore_connection(saved: tuple[str | None, Any]) -> None:
    """Close the engine in use and go back to the `saved` connection (the
    engine reconnects on next use)."""
    global _chosen, _getter
    shutdown()
    chosen, state = saved
    with _lock:
        _chosen, _getter = chosen, None
    if state is not None:
        _module(engine_name()).restore_connection(state)
