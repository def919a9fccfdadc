"""`RayEngine`: `lucidity.engine.Engine` on Ray, every job one Ray task.

* placement: `lucidity.ray.placement` (`local` and `node` pin, `fanout`
  spreads), with the task's code shipped in its `runtime_env`
  (`lucidity.ray.shipping`);
* errors: the task (`lucidity.ray.task`) sends lucidity's error payload back
  as a value, decoded as the ZeroMQ client does (`decode_error`), so the
  job's own exception type and remote traceback arrive, not `RayTaskError`
  (Ray's own failures: `lucidity.ray.outcomes`);
  a lost worker or node is Ray's to retry (MAX_SYSTEM_ATTEMPTS runs), an
  application error is run again here only with `retries`;
* `timeout` and `Job.cancel()` end a running job with `ray.cancel(force=True)`
  (its worker process is killed); `memory` and `fuel` run in a single-use
  worker (`max_calls=1`) that arms the limits before the job;
* batches: `submit_batch` runs a fanout's batch in one task; the fanout
  driver (`lucidity.fanout`) sizes and windows them;
* waits inside a Ray task go through `wait_any` (`lucidity.ray.waits`:
  `ray.wait`, which lends the worker's CPU), the wait hook the task body sets.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

import ray
from ray import exceptions as rex

from lucidity._options import JobOptions
from lucidity.cluster.client.results import decode_error
from lucidity.engine import BatchResult, NodeInfo, Target, target_name
from lucidity.errors import ClusterError, JobTimeoutError, LucidityError
from lucidity.handle import Job
from lucidity.ray import task
from lucidity.ray.outcomes import ray_error
from lucidity.ray.placement import Placement
from lucidity.ray.shipping import init_args
from lucidity.ray.timers import Timers
from lucidity.ray.waits import RefWaits

__all__ = ["RayEngine"]


class _Run:
    """One submitted job: what it takes to run it again, and its current task."""

    __slots__ = tuple(
        "job target options args kwargs local node ref app_attempts timer".split()
    )

    def __init__(
        self,
        job: Job[Any],
        target: Target,
        options: JobOptions,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None,
        local: bool,
        node: str | None,
    ) -> None:
        self.job = job
        self.target = target
        self.options = options
        self.args = args
        self.kwargs = kwargs
        self.local = local
        self.node = node
        self.ref: Any = None
        self.app_attempts = 0
        self.timer: list[Any] | None = None


class RayEngine:
    """lucidity's jobs on a Ray cluster; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._timers = Timers()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            init = functools.partial(ray.init, **init_args(self.address))
            try:
                if threading.current_thread() is threading.main_thread():
                    init()
                else:
                    # Ray's processes die with the *thread* that started them
                    # (PR_SET_PDEATHSIG): start them from the engine's own.
                    self._timers.call(init)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = self.address or "a new local Ray"
                self._timers.close()
                raise ClusterError(
                    f"cannot connect to Ray at {where} (RAY_ADDRESS): {exc}"
                ) from exc
        self._my_node = str(ray.get_runtime_context().get_node_id())
        # In a Ray worker (running a job of ours) waits go through Ray.
        self._in_worker = task._node_id is not None
        self._placement = Placement(self._my_node)
        self._ids = itertools.count(1)
        self._runs: dict[int, _Run] = {}
        self._lock = threading.Lock()
        self._waits = RefWaits(active=self._in_worker, fetched=self._on_fetched)
        self._pid = os.getpid()
        self._closed = False

    def wait_any(self, futures: Sequence[Future[Any]], timeout: float | None) -> None:
        """The wait hook inside a Ray task (`RefWaits.wait_any`)."""
        self._waits.wait_any(futures, timeout)

    def usable(self) -> bool:
        """Open, and this process's (not a fork's)."""
        return not self._closed and self._pid == os.getpid()

    # ---- one job -------------------------------------------------------------

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
        job: Job[Any] = Job(next(self._ids), target_name(target))
        run = _Run(job, target, options, tuple(args), kwargs, local, node)
        job._cancel_hook = self._on_cancelled
        with self._lock:
            self._runs[job.job_id] = run
        self._start(run)
        if options.timeout is not None:
            run.timer = self._timers.call_at(
                time.monotonic() + options.timeout,
                functools.partial(self._on_timeout, run),
            )
        return job

    def _start(self, run: _Run) -> None:
        if run.job.done():
            return
        o = run.options
        try:
            handle = self._placement.handle(run.target, o, False, run.local, run.node)
            ref = handle.remote((run.target, run.args, run.kwargs, o.memory, o.fuel))
        except BaseException as exc:  # noqa: B036 - the job's failure
            self._finish(run, error=exc)
            return
        run.ref = ref
        self._waits.track(run.job, ref)
        ref._on_completed(functools.partial(self._on_done, run, ref))

    def _on_fetched(self, job: Job[Any], ref: Any, outcome: Any) -> None:
        """A waiter in a Ray task fetched `job`'s task `ref` (`RefWaits`)."""
        with self._lock:
            run = self._runs.get(job.job_id)
        if run is not None:
            self._on_done(run, ref, outcome)

    def _on_done(self, run: _Run, ref: Any, result: Any) -> None:
        # Ray's callback thread, or a waiter in a Ray task that got there
        # first (`RefWaits`): once per task, decode, and leave Ray calls to
        # another thread.
        with self._lock:
            if run.ref is not ref or run.job.done():
                return
            run.ref = None  # settled: the other one does nothing
        if isinstance(result, BaseException):
            self._finish(run, error=ray_error(run.job.target, result))
            return
        ok, value, node = result
        if ok:
            self._finish(run, value=value)
            return
        error = decode_error([value], node)
        if run.app_attempts < run.options.retries and not isinstance(
            error, LucidityError
        ):
            run.app_attempts += 1
            self._timers.call_at(0.0, functools.partial(self._start, run))
            return
        self._finish(run, error=error)

    def _finish(
        self, run: _Run, value: Any = None, error: BaseException | None = None
    ) -> None:
        self._timers.cancel(run.timer)
        with self._lock:
            self._runs.pop(run.job.job_id, None)
        try:
            if error is not None:
                run.job.set_exception(error)
            else:
                run.job.set_result(value)
        except InvalidStateError:
            pass  # cancelled or timed out meanwhile
        self._waits.told()

    def _on_timeout(self, run: _Run) -> None:
        job = run.job
        if job.done():
            return
        self._stop(run)
        self._finish(
            run,
            error=JobTimeoutError(
                f"job {job.target} #{job.job_id} ran past its timeout of "
                f"{run.options.timeout} s (on Ray); its Ray worker was stopped"
            ),
        )

    def _stop(self, run: _Run) -> None:
        ref, run.ref = run.ref, None
        if ref is not None:
            try:
                ray.cancel(ref, force=True)
            except (rex.RayError, ValueError):
                pass  # already over

    def _on_cancelled(self, job: Job[Any]) -> None:
        with self._lock:
            run = self._runs.pop(job.job_id, None)
        if run is not None:
            self._timers.cancel(run.timer)
            self._stop(run)
        self._waits.told()

    def run(
        self,
        target: Target,
        options: JobOptions,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None = None,
        *,
        local: bool = False,
    ) -> Any:
        """Run one job and wait for it: `ray.get` on the task, no handle."""
        if options.timeout is not None or options.retries:
            return self.submit(target, options, args, kwargs, local=local).result()
        handle = self._placement.handle(target, options, False, local, None)
        ref = handle.remote((target, args, kwargs, options.memory, options.fuel))
        try:
            ok, value, node = ray.get(ref)
        except rex.RayError as exc:
            raise ray_error(target_name(target), exc) from None
        except BaseException:
            ray.cancel(ref, force=True)
            raise
        if ok:
            return value
        raise decode_error([value], node)

    # ---- many jobs -----------------------------------------------------------

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
        **kwargs)`) for each item, in one Ray task. A batch of one item with
        a `timeout` or `retries` runs as that one job (`submit`)."""
        if len(items) == 1 and (options.timeout is not None or options.retries):
            return self._one(target, options, items[0], kwargs, node, single)
        future: Future[BatchResult] = Future()
        handle = self._placement.handle(target, options, True, False, node)
        o = options
        ref = handle.remote((target, list(items), single, kwargs, o.memory, o.fuel))
        name = target_name(target)

        def done(result: Any) -> None:
            try:
                if isinstance(result, BaseException):
                    future.set_exception(ray_error(name, result))
                else:
                    values, fail, elapsed, where, waited = result
                    error = None
                    if fail is not None:
                        error = (fail[0], decode_error([fail[1]], where))
                    batch = BatchResult(values, error, elapsed, where, waited)
                    future.set_result(batch)
            except BaseException as exc:  # noqa: B036 - else the fanout waits for ever
                if not future.done():
                    future.set_exception(exc)
            finally:
                self._waits.told()

        self._waits.track(future, ref)
        ref._on_completed(done)
        return future

    def _one(
        self,
        target: Target,
        options: JobOptions,
        item: Any,
        kwargs: Mapping[str, Any] | None,
        node: str | None,
        single: bool,
    ) -> Future[BatchResult]:
        """A batch of one job with a `timeout` or `retries`: the job itself,
        its outcome as the batch's (a cancel of the batch cancels the job)."""
        args = (item,) if single else tuple(item)
        job = self.submit(target, options, args, kwargs, node=node)
        future: Future[BatchResult] = Future()
        started = time.perf_counter()

        def done(job: Future[Any]) -> None:
            elapsed = time.perf_counter() - started
            if job.cancelled():
                future.cancel()
            elif job.exception() is not None:
                failure = (0, job.exception())
                future.set_result(BatchResult([], failure, elapsed, "?"))  # type: ignore[arg-type]
            else:
                future.set_result(BatchResult([job.result()], None, elapsed, "?"))
            self._waits.told()

        def cancelled(f: Future[BatchResult]) -> None:
            if f.cancelled():
                job.cancel()

        job.add_done_callback(done)
        future.add_done_callback(cancelled)
        self._waits.track(future, job)  # its wait is the job's task's
        return future

    # ---- the cluster ---------------------------------------------------------

    def nodes(self, timeout: float = 0.0) -> list[NodeInfo]:
        """Ray's live nodes (Ray has at least the one this process joined),
        as read at most NODES_TTL_S ago."""
        return self._placement.alive()

    def cancel(self, job: Job[Any]) -> None:
        """Stop `job` wherever it runs (it may already have ended)."""
        job.cancel()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.job.cancel()
        if self._owns_ray and self._pid == os.getpid() and not self._in_worker:
            ray.shutdown()
        self._timers.close()
