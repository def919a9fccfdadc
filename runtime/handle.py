"""`Job[T]`: the handle of a running job, a `concurrent.futures.Future`.

It adds the seed's verbs (`try_get`, `await_get`) and `await job`. Waiting is
on the future's own condition, set by the client's I/O thread the moment the
result frame arrives; nothing polls. A job waited on from inside a worker
gives its worker's slot back to the node for the length of the wait, so
nested jobs cannot deadlock a node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

__all__ = ["Job"]

T = TypeVar("T")

# Set by a worker process: called around every blocking wait of user code.
_blocking_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None


def set_blocking_hooks(
    hooks: tuple[Callable[[], None], Callable[[], None]] | None,
) -> None:
    global _blocking_hooks
    _blocking_hooks = hooks


# The nesting depth of the job this process runs (set by the worker for each
# job; None outside a worker): jobs submitted from it are one deeper, which
# is how a node lends a blocked job's slot to its children only.
_job_depth: int | None = None


def set_job_depth(depth: int | None) -> None:
    global _job_depth
    _job_depth = depth


def child_depth() -> int | None:
    """The depth of a job submitted from here, or None for an app's job."""
    return None if _job_depth is None else _job_depth + 1


class _Wait:
    """A wait of user code on child jobs, between its worker's hooks."""

    __slots__ = ("hooks",)

    def __init__(self, hooks: tuple[Callable[[], None], Callable[[], None]]) -> None:
        self.hooks = hooks

    def __enter__(self) -> None:
        self.hooks[0]()

    def __exit__(self, *exc: object) -> None:
        self.hooks[1]()


# Outside a worker: nothing to tell (and no generator-based context manager
# on the path of every blocking call).
_NO_HOOKS = contextlib.nullcontext()


def blocking() -> contextlib.AbstractContextManager[None]:
    """Mark a wait of user code on child jobs (lends the worker's slot out)."""
    hooks = _blocking_hooks
    return _NO_HOOKS if hooks is None else _Wait(hooks)


class Job(Future, Generic[T]):  # type: ignore[type-arg]
    """A job's future result; `Future` API plus `try_get` and `await_get`."""

    job_id: int
    target: str

    def __init__(self, job_id: int = 0, target: str = "") -> None:
        super().__init__()
        self.job_id = job_id
        self.target = target
        self._cancel_hook: Callable[[Job[T]], None] | None = None
        # Set by an engine whose waits must go through itself (Ray: a Ray
        # worker lends its CPU only while it waits in ray.wait/ray.get).
        self._wait_hook: Callable[[Job[T], float | None], None] | None = None

    def __repr__(self) -> str:
        base = super().__repr__()
        return base.replace("Job at", f"Job {self.target} #{self.job_id} at", 1)

    def result(self, timeout: float | None = None) -> T:
        if self._wait_hook is not None and not self.done():
            self._wait_hook(self, timeout)
        if _blocking_hooks is not None and not self.done():
            with blocking():
                return super().result(timeout)  # type: ignore[no-any-return]
        return super().result(timeout)  # type: ignore[no-any-return]

    def try_get(self) -> T | None:
        """The result if the job is done (raising its error if it failed), else None."""
        if not self.done():
            return None
        return self.result()

    def await_get(self, timeout: float | None = None) -> T:
        """Block until the job is done and return its result (or raise its error)."""
        return self.result(timeout)

    def cancel(self) -> bool:
        """Cancel the job: queued, it never runs; running, its worker is stopped.

        The client never moves a job to RUNNING (the job runs elsewhere), so
        `Future.cancel` succeeds until the result is in.
        """
        if not super().cancel():
            return False
        # Wake `concurrent.futures.wait` waiters too, as an executor would.
        self.set_running_or_notify_cancel()
        if self._cancel_hook is not None:
            self._cancel_hook(self)
        return True

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()
