"""A test engine: `Engine` on a thread pool in this process.

For unit tests of what is written against the seam (the Executor, the joblib
backend): no daemons, no pickling. It records what it was asked to do
(`submitted`, `batches`, `cancelled`) so that tests can check the layer above
it; `gate`, when set, holds every job until it is set (to fill the pool).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lucidity import JobOptions
from lucidity.engine import BatchResult, NodeInfo, Target
from lucidity.handle import Job


def _callable(target: Target) -> Callable[..., Any]:
    if isinstance(target, str):
        from lucidity.cluster.node.worker import resolve

        return resolve(target)
    return target


class ThreadEngine:
    name = "threads"

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="thread-engine")
        self._ids = itertools.count(1)
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.submitted: list[Target] = []
        self.batches: list[int] = []
        self.cancelled: list[int] = []
        self.gate: threading.Event | None = None

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(30)
            return fn(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1

    def _chain(self, inner: Future[Any], target: Target) -> Job[Any]:
        job: Job[Any] = Job(next(self._ids), str(target))

        def cancel(j: Job[Any]) -> None:
            self.cancelled.append(j.job_id)
            inner.cancel()

        job._cancel_hook = cancel

        def done(f: Future[Any]) -> None:
            if f.cancelled():
                job.cancel()
            elif not job.done():
                exc = f.exception()
                if exc is not None:
                    job.set_exception(exc)
                else:
                    job.set_result(f.result())

        inner.add_done_callback(done)
        return job

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
        self.submitted.append(target)
        fn = _callable(target)
        return self._chain(
            self._pool.submit(self._call, fn, *args, **(kwargs or {})), target
        )

    def run(
        self,
        target: Target,
        options: JobOptions,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None = None,
        *,
        local: bool = False,
    ) -> Any:
        return self.submit(target, options, args, kwargs).result()

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
        self.batches.append(len(items))
        fn = _callable(target)
        kw = dict(kwargs or {})
        if single:
            items = [(item,) for item in items]

        def batch() -> BatchResult:
            started = time.perf_counter()
            values: list[Any] = []
            for index, item in enumerate(items):
                try:
                    values.append(fn(*item, **kw))
                except Exception as exc:
                    failure = (index, exc)
                    return BatchResult(
                        values, failure, time.perf_counter() - started, "thread-0"
                    )
            return BatchResult(values, None, time.perf_counter() - started, "thread-0")

        return self._chain(self._pool.submit(self._call, batch), target)

    def nodes(self, timeout: float = 0.0) -> list[NodeInfo]:
        return [NodeInfo("thread-0", "thread://0", self.workers)]

    def cancel(self, job: Job[Any]) -> None:
        job.cancel()

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---- as an engine module of `lucidity.engine.ENGINES` ------------------------

_engine: ThreadEngine | None = None


def connect(address: str | None, keys: Any = None, *, insecure: bool = False) -> None:
    shutdown()


def get_engine() -> ThreadEngine:
    global _engine
    if _engine is None:
        _engine = ThreadEngine()
    return _engine


def shutdown() -> None:
    global _engine
    engine, _engine = _engine, None
    if engine is not None:
        engine.close()
