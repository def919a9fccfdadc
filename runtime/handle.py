"""`Job[T]`: the handle of a running job, a `concurrent.futures.Future`.

It adds the seed's verbs (`try_get`, `await_get`) and `await job`. Waiting is
on the future's own condition, set by the client's I/O thread the moment the
result frame arrives; nothing polls. A job waited on from inside a worker
gives its worker's slot back to the node for the length of the wait, so
nested jobs cannot deadlock a node. An engine whose workers lend their CPU
only while they wait through the engine itself (Ray: `ray.wait`) sets a wait
hook (`set_wait_hook`) there, which `Job.result` and the fanout driver
(`wait_any`) wait through instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

__all__ = ["Job", "hooked_wait", "set_wait_hook", "wait_hook", "waited_s"]

T = TypeVar("T")

# Set by a worker process: called around every blocking wait of user code.
_blocking_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None


def set_blocking_hooks(
    hooks: tuple[Callable[[], None], Callable[[], None]] | None,
) -> None:
    global _blocking_hooks
    _blocking_hooks = hooks


# Set by an engine's worker process: waits until one of the given futures
# (of that engine) is done, or `timeout` s, through the engine.
WaitHook = Callable[[Sequence["Future[Any]"], "float | None"], None]
_wait_hook: WaitHook | None = None


def set_wait_hook(hook: WaitHook | None) -> None:
    global _wait_hook
    _wait_hook = hook


def wait_hook() -> WaitHook | None:
    """The wait hook of this process's engine worker, if it set one."""
    return _wait_hook


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


# Seconds user code of this process has spent waiting on child jobs, through
# its worker's hooks: a fanout batch's own time is its run less what it
# waited (`waited_s`), which is how batches of nested jobs are sized.
_waited_s = 0.0


def waited_s() -> float:
    """The seconds this process has waited on child jobs so far."""
    return _waited_s


def hooked_wait(
    hook: WaitHook, futures: Sequence[Future[Any]], timeout: float | None
) -> None:
    """`hook(futures, timeout)`, its time counted in `waited_s`."""
    global _waited_s
    started = time.perf_counter()
    try:
        hook(futures, timeout)
    finally:
        _waited_s += time.perf_counter() - started


class _Wait:
    """A wait of user code on child jobs, between its worker's hooks."""

    __slots__ = ("hooks", "started")

    def __init__(self, hooks: tuple[Callable[[], None], Callable[[], None]]) -> None:
        self.hooks = hooks
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()
        self.hooks[0]()

    def __exit__(self, *exc: object) -> None:
        global _waited_s
        self.hooks[1]()
        _waited_s += time.perf_counter() - self.started


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
        # Where it ran (its node's id, its worker's pid), once its result is in.
        self.node: str | None = None
        self.pid: int | None = None
        self._cancel_hook: Callable[[Job[T]], None] | None = None

    def __repr__(self) -> str:
        base = super().__repr__()
        return base.replace("Job at", f"Job {self.target} #{self.job_id} at", 1)

    def result(self, timeout: float | None = None) -> T:
        if _wait_hook is not None and not self.done():
            hooked_wait(_wait_hook, (self,), timeout)
            # Done now, or `timeout` has passed.
            return super().result(None if timeout is None else 0)  # type: ignore[no-any-return]
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
        if self.cancelled():
            return True  # once only: notifying a second time would raise
        if not super().cancel():
            return False
        # Wake `concurrent.futures.wait` waiters too, as an executor would.
        self.set_running_or_notify_cancel()
        if self._cancel_hook is not None:
            self._cancel_hook(self)
        return True

    def __await__(self) -> Generator[Any, None, T]:
        # Imported here: asyncio costs every process ~20 ms to import, and
        # whoever awaits has it loaded already.
        import asyncio

        if _blocking_hooks is None or self.done():
            return asyncio.wrap_future(self).__await__()
        return self._await_lending()

    def _await_lending(self) -> Generator[Any, None, T]:
        # An `async def` job awaiting a child: its worker's event loop is
        # idle on it as a blocking wait would be, so the slot is lent out too.
        import asyncio

        with blocking():
            value: T = yield from asyncio.wrap_future(self).__await__()
        return value
