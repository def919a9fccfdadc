"""The seam between generated modules and the runtime.

A generated `*_jobs.py` module imports only this module: each generated
function is one call into it. Retries, timeouts, placement and fanout live
here (and below, in the client), never in generated code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from lucidity._options import JobOptions, validate_options
from lucidity.handle import Job

__all__ = [
    "JobRef",
    "fanout",
    "fanout_each",
    "run_local",
    "run_remote",
    "submit_local",
    "submit_remote",
]

T = TypeVar("T")


class _Runtime(Protocol):
    """What the stubs call: the ZeroMQ `Client`, or the `RayEngine`."""

    def submit(
        self,
        target: str,
        options: JobOptions,
        args: tuple[Any, ...],
        *,
        local: bool = ...,
    ) -> Job[Any]: ...

    def run(
        self,
        target: str,
        options: JobOptions,
        args: tuple[Any, ...],
        *,
        local: bool = ...,
    ) -> Any: ...

    def fanout(
        self, target: str, options: JobOptions, items: Iterable[Any], single: bool = ...
    ) -> list[Any]: ...


ENGINES = ("zmq", "ray")
# The engine `lucidity.connect(engine=...)` chose; None: $LUCIDITY_ENGINE.
_engine: str | None = None
_get_client: Callable[[], _Runtime] | None = None


def engine_name() -> str:
    """The engine this process uses: "zmq" (lucidity's daemons) or "ray"."""
    name = _engine or os.environ.get("LUCIDITY_ENGINE") or "zmq"
    if name not in ENGINES:
        raise ValueError(
            f"LUCIDITY_ENGINE={name!r} is not an engine; allowed: "
            + ", ".join(repr(e) for e in ENGINES)
        )
    return name


def _client() -> _Runtime:
    # Imported on first use, not with the stubs: a generated module stays
    # cheap to import; and once, not on every call (a hot path).
    global _get_client
    if _get_client is None:
        if engine_name() == "ray":
            try:
                from lucidity.ray_engine import get_ray_engine
            except ModuleNotFoundError as exc:
                if exc.name != "ray":
                    raise
                raise ModuleNotFoundError(
                    "the Ray engine (LUCIDITY_ENGINE=ray) needs Ray: "
                    'pip install "lucidity[ray]"',
                    name="ray",
                ) from None
            _get_client = get_ray_engine
        else:
            from lucidity.client import get_client

            _get_client = get_client
    return _get_client()


class JobRef(Generic[T]):
    """A job named by reference (`"pkg.mod:f"`) with its validated options.

    Generated code builds one per job at import time, e.g.
    `_square: JobRef[int] = JobRef("app.geometry:square", {"fanout": "random"})`;
    it never imports the job's own module.
    """

    __slots__ = ("target", "options")

    def __init__(self, target: str, options: Mapping[str, object] | None = None):
        module, sep, name = target.partition(":")
        if not (module and sep and name):
            raise ValueError(f"job target {target!r} is not of the form 'pkg.mod:func'")
        self.target = target
        self.options: JobOptions = validate_options(options or {})

    def __repr__(self) -> str:
        return f"JobRef({self.target!r})"


def submit_local(ref: JobRef[T], args: tuple[Any, ...]) -> Job[T]:
    """Start `ref(*args)` on this process's own node; return its handle."""
    return _client().submit(ref.target, ref.options, args, local=True)


def submit_remote(ref: JobRef[T], args: tuple[Any, ...]) -> Job[T]:
    """Start `ref(*args)` on a random live node; return its handle."""
    return _client().submit(ref.target, ref.options, args, local=False)


def run_local(ref: JobRef[T], args: tuple[Any, ...]) -> T:
    """Run `ref(*args)` on this process's own node and wait for it."""
    value: T = _client().run(ref.target, ref.options, args, local=True)
    return value


def run_remote(ref: JobRef[T], args: tuple[Any, ...]) -> T:
    """Run `ref(*args)` on a random live node and wait for it."""
    value: T = _client().run(ref.target, ref.options, args)
    return value


def fanout(ref: JobRef[T], items: Iterable[tuple[Any, ...]]) -> list[T]:
    """Run `ref(*item)` for every item over the nodes; results in input order."""
    return _client().fanout(ref.target, ref.options, items)


def fanout_each(ref: JobRef[T], items: Iterable[Any]) -> list[T]:
    """Run `ref(item)` for every item (a one-parameter job) over the nodes;
    results in input order. Items travel as they are, not wrapped in tuples."""
    return _client().fanout(ref.target, ref.options, items, single=True)
