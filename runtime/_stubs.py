"""The seam between generated modules and the runtime.

A generated `*_jobs.py` module imports only this module: each generated
function is one call into it. Retries, timeouts, placement and fanout live
here (and below, in the client), never in generated code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from lucidity._options import JobOptions, validate_options
from lucidity.handle import Job

if TYPE_CHECKING:
    from lucidity.client import Client

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

_get_client: Callable[[], Client] | None = None


def _no_output() -> None:
    pass


# `lucidity.printer.settle` once the client is loaded: a blocking call's
# printed lines are written before its caller goes on.
_settle: Callable[[], None] = _no_output


def _client() -> Client:
    # Imported on first use, not with the stubs: a generated module stays
    # cheap to import; and once, not on every call (a hot path).
    global _get_client, _settle
    if _get_client is None:
        from lucidity.client import get_client
        from lucidity.printer import settle

        _get_client, _settle = get_client, settle
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
    try:
        value: T = _client().run(ref.target, ref.options, args, local=True)
    finally:
        _settle()
    return value


def run_remote(ref: JobRef[T], args: tuple[Any, ...]) -> T:
    """Run `ref(*args)` on a random live node and wait for it."""
    try:
        value: T = _client().run(ref.target, ref.options, args)
    finally:
        _settle()
    return value


def fanout(ref: JobRef[T], items: Iterable[tuple[Any, ...]]) -> list[T]:
    """Run `ref(*item)` for every item over the nodes; results in input order."""
    return _client().fanout(ref.target, ref.options, items)


def fanout_each(ref: JobRef[T], items: Iterable[Any]) -> list[T]:
    """Run `ref(item)` for every item (a one-parameter job) over the nodes;
    results in input order. Items travel as they are, not wrapped in tuples."""
    return _client().fanout(ref.target, ref.options, items, single=True)
