"""The engine seam: the one protocol everything above an engine is written against.

Generated code reaches the runtime through `lucidity._stubs`; `_stubs`, the
fanout driver, `Executor`, the joblib backend and the pytest plugin reach an
engine only through `Engine` below, and never import an engine's own
modules. An engine is one object per process, picked by `get_engine()`.

This module owns the protocol and its small value types. It may import only
the engine-neutral parts of the package (`Job`, `JobOptions`, errors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lucidity._options import JobOptions
from lucidity.handle import Job

__all__ = ["BatchResult", "Engine", "NodeInfo", "Target", "get_engine"]

# What a job runs: a reference "pkg.mod:func" (generated code), or a
# picklable callable (the Executor, joblib).
Target = str | Callable[..., Any]


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
    long the batch ran where it ran (the driver sizes batches from it).
    """

    values: list[Any]
    failure: tuple[int, BaseException] | None
    elapsed_s: float
    node: str


@runtime_checkable
class Engine(Protocol):
    """What a job engine does for the layers above it.

    `args` are positional arguments and `kwargs` keyword arguments exactly as
    the caller made them (None: none). `local` asks for this process's own
    node (inside a job: the node running it). `node` (an id of `nodes()`)
    pins a submission to one member; None lets the engine place it.
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
        items: Sequence[tuple[Any, ...]],
        kwargs: Mapping[str, Any] | None = None,
        *,
        node: str | None = None,
    ) -> Future[BatchResult]:
        """Start `target(*item, **kwargs)` for each item, one after another, as
        one unit of placement; its future holds the batch's `BatchResult`."""
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


def get_engine() -> Engine:
    """This process's engine.

    For now always the ZeroMQ client, through the bridge in
    `lucidity._client_engine` (until the client implements `Engine` itself);
    it follows `lucidity.connect`/`shutdown`, so it may be held across them.
    """
    from lucidity._client_engine import client_engine

    return client_engine()
