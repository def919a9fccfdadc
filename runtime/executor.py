"""`lucidity.Executor`: a `concurrent.futures.Executor` on the cluster.

It runs any picklable callable as a job (a module-level function goes by
reference, its package shipped as a job's is) and hands back a `Job`, a
`Future`, so `wait`, `as_completed` and everything written for the standard
executors work unchanged. It is written against the `Engine` seam only.

`max_workers` bounds the jobs in flight: the rest wait here, in order, and
a dispatcher thread (started only once something has to wait) sends each as
a slot frees. `map` goes through the fanout driver (`fanout_iter`), its
batch jobs through that same bound: chunks of `chunksize` (one batch job
each, run one after another by one worker) or sized by the driver, at most
`buffersize` chunks ahead of the caller when that is set (Python 3.14's
`Executor.map`).
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

from lucidity._options import JobOptions, validate_options
from lucidity.engine import BatchResult, Engine, get_engine
from lucidity.fanout import fanout_iter
from lucidity.handle import Job

__all__ = ["Executor"]

T = TypeVar("T")

_ids = itertools.count(1)


def _name(fn: Callable[..., Any]) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    module = getattr(inner, "__module__", None) or "?"
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"{module}:{name}"


class _Call:
    """One submission: its caller's future and, until it is sent, how to send it."""

    __slots__ = ("future", "launch", "inner")

    def __init__(self, future: Job[Any], launch: Callable[[], Future[Any]]) -> None:
        self.future = future
        # Dropped once sent: the executor keeps no reference to the callable
        # or its arguments after that.
        self.launch: Callable[[], Future[Any]] | None = launch
        self.inner: Future[Any] | None = None


class Executor(futures.Executor):
    """Run callables as jobs on the cluster, at most `max_workers` at a time
    (None: no bound here; nodes queue what they cannot run yet).

    `options` are job options (`JobOptions` or the `@job(...)` mapping:
    `timeout`, `retries`, `memory`, `fuel`...), applied to every job;
    `engine` defaults to this process's (`lucidity.engine.get_engine()`).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        options: JobOptions | Mapping[str, object] | None = None,
        engine: Engine | None = None,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max = max_workers
        self._engine = engine if engine is not None else get_engine()
        self._options = (
            options
            if isinstance(options, JobOptions)
            else validate_options(options or {})
        )
        self._cond = threading.Condition()
        self._queue: deque[_Call] = deque()
        self._outstanding: set[_Call] = set()
        self._in_flight = 0
        self._shutdown = False
        self._dispatcher: threading.Thread | None = None

    # ---- submission ---------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Job[T]:
        """Start `fn(*args, **kwargs)` as a job; its handle at once."""
        engine, options = self._engine, self._options
        kw = kwargs or None

        def launch() -> Future[Any]:
            return engine.submit(fn, options, args, kw)

        return self._enqueue(launch, _name(fn))

    def _submit_batch(
        self,
        target: Callable[..., Any],
        options: JobOptions,
        items: Sequence[Any],
        kwargs: Mapping[str, Any] | None = None,
        *,
        node: str | None = None,
        single: bool = False,
    ) -> Job[BatchResult]:
        """`Engine.submit_batch` through this executor's `max_workers` bound."""
        engine = self._engine

        def launch() -> Future[Any]:
            return engine.submit_batch(
                target, options, items, kwargs, node=node, single=single
            )

        return self._enqueue(launch, _name(target))

    def _enqueue(self, launch: Callable[[], Future[Any]], name: str) -> Job[Any]:
        future: Job[Any] = Job(next(_ids), name)
        call = _Call(future, launch)
        future._cancel_hook = functools.partial(self._on_cancel, call)
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._outstanding.add(call)
            now = self._max is None or (self._in_flight < self._max and not self._queue)
            if now:
                self._in_flight += 1
            else:
                self._queue.append(call)
                self._start_dispatcher()
                self._cond.notify_all()
        if now:
            self._launch(call)
        return future

    def _start_dispatcher(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(
                target=self._dispatch, name="lucidity-executor", daemon=True
            )
            self._dispatcher.start()

    def _dispatch(self) -> None:
        """Send queued calls as slots free (waits on the condition, no polling)."""
        assert self._max is not None
        while True:
            with self._cond:
                while not (self._queue and self._in_flight < self._max):
                    if self._shutdown and not self._queue:
                        return
                    self._cond.wait()
                call = self._queue.popleft()
                self._in_flight += 1
            self._launch(call)

    def _launch(self, call: _Call) -> None:
        launch, call.launch = call.launch, None
        future = call.future
        if launch is None or future.cancelled():
            self._release(call)
            return
        try:
            inner = launch()
        except BaseException as exc:  # noqa: B036 - the caller's future holds it
            self._settle(future, None, exc)
            self._release(call)
            return
        del launch
        call.inner = inner
        if future.cancelled():  # cancelled while it was being sent
            inner.cancel()
        inner.add_done_callback(functools.partial(self._finished, call))

    def _finished(self, call: _Call, inner: Future[Any]) -> None:
        try:
            future = call.future
            if inner.cancelled():
                if not future.done():
                    future.cancel()
            else:
                exc = inner.exception()
                self._settle(future, None if exc is not None else inner.result(), exc)
        finally:
            call.inner = None
            self._release(call)

    @staticmethod
    def _settle(future: Job[Any], value: Any, exc: BaseException | None) -> None:
        try:
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(value)
        except InvalidStateError:
            pass  # its caller cancelled it meanwhile

    def _release(self, call: _Call) -> None:
        with self._cond:
            self._in_flight -= 1
            self._outstanding.discard(call)
            self._cond.notify_all()

    def _on_cancel(self, call: _Call, _: Job[Any]) -> None:
        """The caller cancelled `call`'s future: a queued call leaves the
        queue; a sent one is cancelled where it runs."""
        with self._cond:
            if call in self._queue:
                self._queue.remove(call)
                self._outstanding.discard(call)
                call.launch = None
                self._cond.notify_all()
                return
            inner = call.inner
        if inner is not None:
            inner.cancel()

    # ---- map ------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """`map(fn, *iterables)` on the cluster, results in order, through
        the fanout driver (`lucidity.fanout.fanout_iter`).

        `chunksize` > 1 fixes the items per job; 1 (the default) lets the
        driver size batches from the measured cost of an item, unless
        `buffersize` is set: then chunks are of `chunksize` and at most
        `buffersize` of them are read ahead of the caller. `timeout` counts
        from this call.
        """
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        # A bounded read-ahead is a bound on items, so their batches must not
        # grow under it; otherwise one item a job only if asked for.
        size = chunksize if chunksize > 1 or buffersize is not None else None
        source = zip(*iterables)  # noqa: B905 - stops at the shortest, as map does
        return fanout_iter(
            self._engine,
            fn,
            self._options,
            source,
            size=size,
            ahead=buffersize,
            timeout=timeout,
            send=self._submit_batch,
        )

    # ---- shutdown ---------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new submissions; with `cancel_futures`, the calls still queued
        here are cancelled; with `wait`, return when every call has ended."""
        with self._cond:
            self._shutdown = True
            dropped = list(self._queue) if cancel_futures else []
            self._cond.notify_all()
        for call in dropped:
            call.future.cancel()
        if wait:
            with self._cond:
                while self._outstanding:
                    self._cond.wait()
            dispatcher = self._dispatcher
            if dispatcher is not None:
                dispatcher.join()
