"""The Ray engine: lucidity's jobs as Ray tasks (`LUCIDITY_ENGINE=ray`).

One `RayEngine` per process implements `lucidity.engine.Engine` on Ray: it
connects to `RAY_ADDRESS` (or the address given to `connect`), and with
neither starts what a plain `ray.init()` would, kept on 127.0.0.1 like the
embedded cluster. Every job is one Ray task running `lucidity._ray_task`:

* placement: `local` pins the task to the caller's Ray node (hard node
  affinity); otherwise `fanout` picks a live node, round-robin or at random
  (soft affinity: Ray may move it if that node is gone);
* errors: the task sends lucidity's error payload back as a value, so the
  job's own exception type and remote traceback arrive, not `RayTaskError`;
  a lost worker or node is Ray's to retry (MAX_SYSTEM_ATTEMPTS runs), an
  application error is run again here only with `retries`;
* `timeout` and `Job.cancel()` end a running job with `ray.cancel(force=True)`
  (its worker process is killed); `memory` and `fuel` run in a single-use
  worker (`max_calls=1`) that arms the limits before the job;
* code: the job's package travels as its `bundle.build_bundle` zip,
  uploaded once to Ray's GCS under its digest and named as a `py_modules`
  URI in the task's `runtime_env` (a Ray worker serves one runtime_env: two
  versions never share a process); nested jobs inherit it;
* fanout: chunks of items in one task each, sized like the ZeroMQ client's
  (`_ChunkSizer`), a bounded number in flight, collected with `ray.wait`
  (which, like `ray.get`, gives a Ray worker's CPU back while it waits).

Importing `lucidity` never imports this module or Ray.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

import ray
from ray import exceptions as rex
from ray._private import ray_constants
from ray._private.runtime_env import packaging
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lucidity import _ray_task
from lucidity._options import JobOptions
from lucidity._timers import Timers
from lucidity.bundle import Bundle, build_bundle
from lucidity.client import (
    MAX_SYSTEM_ATTEMPTS,
    _decode_error,
)
from lucidity.engine import BatchResult, NodeInfo, Target
from lucidity.errors import (
    ClusterError,
    JobCancelledError,
    JobTimeoutError,
    LucidityError,
    WorkerLostError,
)
from lucidity.handle import Job

__all__ = ["RayEngine", "connect", "get_ray_engine", "shutdown"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# The node list is read from Ray's GCS at most this often (placement).
NODES_TTL_S = 1.0
# Packages whose bundles this process's runtime_env already holds (a Ray
# worker's: its nested jobs inherit them): "pkg=digest,..." .
SHIPPED_ENV = "LUCIDITY_RAY_SHIPPED"
# Ray errors that mean the run was lost, not failed by the job.
_LOST = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.LocalRayletDiedError,
    rex.OutOfMemoryError,
    rex.ObjectLostError,
)


def _name(target: Target) -> str:
    if isinstance(target, str):
        return target
    return f"{target.__module__}:{getattr(target, '__qualname__', repr(target))}"


def ray_error(name: str, exc: BaseException) -> BaseException:
    """What a Ray-side failure of job `name` is to lucidity's callers."""
    if isinstance(exc, rex.TaskCancelledError):
        return JobCancelledError(f"job {name} was cancelled")
    if isinstance(exc, _LOST):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return WorkerLostError(
            f"job {name} failed: its Ray worker or node was lost ({type(exc).__name__}"
            f": {first}) (attempt {MAX_SYSTEM_ATTEMPTS} of {MAX_SYSTEM_ATTEMPTS})"
        )
    if isinstance(exc, rex.RuntimeEnvSetupError):
        return ClusterError(f"Ray could not set up the code of job {name}: {exc}")
    if isinstance(exc, rex.RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause  # e.g. the result did not pickle: the job's own error
    return ClusterError(f"Ray failed job {name}: {type(exc).__name__}: {exc}")


class _Run:
    """One submitted job: what it takes to run it again, and its current task."""

    __slots__ = (
        "job",
        "target",
        "options",
        "args",
        "kwargs",
        "local",
        "node",
        "ref",
        "app_attempts",
        "timer",
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


def _loopback(address: str | None) -> bool:
    if address is None:
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


def _keep_on_loopback() -> None:
    """Keep 127.0.0.1 as Ray's node address: Ray otherwise resolves it to the
    machine's network address. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's
    switch for that (it also refuses a second node); Ray reads it when it is
    imported, so this process's copy is set too. A value the user set wins."""
    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    value = os.environ.setdefault(name, "0")
    ray_constants.ENABLE_RAY_CLUSTER = value.lower() in ("1", "true")


class RayEngine:
    """lucidity's jobs on a Ray cluster; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._timers = Timers()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs: dict[str, Any] = {"address": self.address}
            if _loopback(self.address):
                _keep_on_loopback()
                kwargs["_node_ip_address"] = LOOPBACK_HOSTS[0]
            if self.address is None:
                kwargs["include_dashboard"] = False
            try:
                if threading.current_thread() is threading.main_thread():
                    ray.init(**kwargs)
                else:
                    # Ray's processes die with the *thread* that started them
                    # (PR_SET_PDEATHSIG): start them from the engine's own.
                    self._timers.call(functools.partial(ray.init, **kwargs))
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = self.address or "a new local Ray"
                raise ClusterError(
                    f"cannot connect to Ray at {where} (RAY_ADDRESS): {exc}"
                ) from exc
        self._my_node = str(ray.get_runtime_context().get_node_id())
        # In a Ray worker (running a job of ours) waits must go through Ray.
        self._in_worker = _ray_task._node_id is not None
        retries = MAX_SYSTEM_ATTEMPTS - 1
        self._tasks = {
            (batch, limited): ray.remote(
                num_cpus=1,
                max_retries=retries,
                # 0: unlimited; 1: a fresh worker for each job with limits.
                max_calls=1 if limited else 0,
            )(_ray_task.run_batch if batch else _ray_task.run_job)
            for batch in (False, True)
            for limited in (False, True)
        }
        self._handles: dict[tuple[Any, ...], Any] = {}
        self._envs: dict[str, tuple[str, dict[str, Any]] | None] = {}
        shipped = os.environ.get(SHIPPED_ENV, "")
        self._inherited = {s.partition("=")[0] for s in shipped.split(",") if s}
        self._nodes: list[NodeInfo] = []
        self._nodes_at = 0.0
        self._rr = itertools.count(random.randrange(1 << 16))
        self._ids = itertools.count(1)
        self._runs: dict[int, _Run] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    # ---- where a task goes, with which code ---------------------------------

    def _env(self, target: Target) -> tuple[str, dict[str, Any]] | None:
        """(key, runtime_env) shipping the job's package, or None (nothing to
        ship: installed, or already in this worker's inherited runtime_env)."""
        module = (
            target.partition(":")[0] if isinstance(target, str) else target.__module__
        )
        top = module.split(".", 1)[0]
        try:
            return self._envs[top]
        except KeyError:
            pass
        env: tuple[str, dict[str, Any]] | None = None
        if top not in self._inherited:
            bundle = build_bundle(module)
            if bundle is not None:
                env = (
                    bundle.digest,
                    {
                        "py_modules": [_upload(bundle)],
                        "env_vars": {SHIPPED_ENV: f"{top}={bundle.digest}"},
                    },
                )
        self._envs[top] = env
        return env

    def _alive(self) -> list[NodeInfo]:
        now = time.monotonic()
        if now - self._nodes_at > NODES_TTL_S or not self._nodes:
            self._nodes = self.nodes()
            self._nodes_at = now
        return self._nodes

    def _place(self, options: JobOptions, local: bool, node: str | None) -> Any:
        """(node id, soft) for the task's affinity, or None: Ray places it."""
        if local:
            return (self._my_node, False)
        if node is not None:
            return (node, False)  # pinned, as the protocol says
        nodes = self._alive()
        if len(nodes) <= 1:
            return None
        if options.fanout == "random":
            return (random.choice(nodes).id, True)
        return (nodes[next(self._rr) % len(nodes)].id, True)

    def _handle(
        self,
        target: Target,
        options: JobOptions,
        batch: bool,
        local: bool,
        node: str | None,
    ) -> Any:
        limited = options.memory is not None or options.fuel is not None
        place = self._place(options, local, node)
        env = self._env(target)
        key = (batch, limited, place, env[0] if env else None)
        handle = self._handles.get(key)
        if handle is None:
            handle = self._tasks[batch, limited]
            extra: dict[str, Any] = {}
            if place is not None:
                extra["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                    node_id=place[0], soft=place[1]
                )
            if env is not None:
                extra["runtime_env"] = env[1]
            if extra:
                handle = handle.options(**extra)
            self._handles[key] = handle
        return handle

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
        job: Job[Any] = Job(next(self._ids), _name(target))
        run = _Run(job, target, options, tuple(args), kwargs, local, node)
        job._cancel_hook = self._on_cancelled
        if self._in_worker:
            job._wait_hook = functools.partial(self._wait_in_worker, run)
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
            handle = self._handle(run.target, o, False, run.local, run.node)
            ref = handle.remote(run.target, run.args, run.kwargs, o.memory, o.fuel)
        except BaseException as exc:  # noqa: B036 - the job's failure
            self._finish(run, error=exc)
            return
        run.ref = ref
        ref._on_completed(functools.partial(self._on_done, run, ref))

    def _on_done(self, run: _Run, ref: Any, result: Any) -> None:
        # Ray's callback thread: decode, and leave Ray calls to another thread.
        if run.ref is not ref or run.job.done():
            return
        if isinstance(result, BaseException):
            self._finish(run, error=ray_error(run.job.target, result))
            return
        ok, value, node = result
        if ok:
            self._finish(run, value=value)
            return
        error = _decode_error([value], node)
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

    def _wait_in_worker(self, run: _Run, job: Job[Any], timeout: float | None) -> None:
        """Inside a Ray task: wait through Ray, which lends this worker's CPU
        to other tasks meanwhile (nested jobs cannot starve the cluster)."""
        ref = run.ref
        if ref is not None:
            ray.wait([ref], timeout=timeout)

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
        handle = self._handle(target, options, False, local, None)
        ref = handle.remote(target, args, kwargs, options.memory, options.fuel)
        try:
            ok, value, node = ray.get(ref)
        except rex.RayError as exc:
            raise ray_error(_name(target), exc) from None
        except BaseException:
            ray.cancel(ref, force=True)
            raise
        if ok:
            return value
        raise _decode_error([value], node)

    # ---- many jobs -----------------------------------------------------------

    def _batch_ref(
        self,
        target: Target,
        options: JobOptions,
        items: Sequence[Any],
        single: bool,
        kwargs: Mapping[str, Any] | None,
        node: str | None = None,
    ) -> Any:
        handle = self._handle(target, options, True, False, node)
        return handle.remote(
            target, list(items), single, kwargs, options.memory, options.fuel
        )

    def _batch_result(
        self, target: Target, first: int, ref: Any
    ) -> tuple[list[Any], tuple[int, BaseException] | None, float, str]:
        try:
            values, fail, elapsed, node = ray.get(ref)
        except rex.RayError as exc:
            return [], (0, ray_error(_name(target), exc)), 0.0, "?"
        error = None if fail is None else (fail[0], _decode_error([fail[1]], node))
        return values, error, elapsed, node

    def submit_batch(
        self,
        target: Target,
        options: JobOptions,
        items: Sequence[tuple[Any, ...]],
        kwargs: Mapping[str, Any] | None = None,
        *,
        node: str | None = None,
    ) -> Future[BatchResult]:
        """Start `target(*item, **kwargs)` for each item in one Ray task."""
        future: Future[BatchResult] = Future()
        ref = self._batch_ref(target, options, items, False, kwargs, node)

        def done(result: Any) -> None:
            if isinstance(result, BaseException):
                future.set_exception(ray_error(_name(target), result))
                return
            values, fail, elapsed, where = result
            error = None if fail is None else (fail[0], _decode_error([fail[1]], where))
            future.set_result(BatchResult(values, error, elapsed, where))

        ref._on_completed(done)
        return future

    def fanout(
        self,
        target: Target,
        options: JobOptions,
        items: Iterable[Any],
        single: bool = False,
    ) -> list[Any]:
        """Run `target` once per item; results in input order (`_ray_fanout`)."""
        from lucidity._ray_fanout import fanout

        return fanout(self, target, options, items, single)

    # ---- the cluster ---------------------------------------------------------

    def nodes(self, timeout: float = 0.0) -> list[NodeInfo]:
        """Ray's live nodes (Ray has at least the one this process joined)."""
        out = []
        for n in ray.nodes():  # type: ignore[no-untyped-call]
            if not n.get("Alive"):
                continue
            resources = n.get("Resources", {})
            out.append(
                NodeInfo(
                    id=str(n["NodeID"]),
                    address=f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}",
                    slots=int(resources.get("CPU", 0)),
                    extra={
                        "hostname": n.get("NodeManagerHostname", ""),
                        "memory": int(resources.get("memory", 0)),
                        "object_store_memory": int(
                            resources.get("object_store_memory", 0)
                        ),
                        "head": "node:__internal_head__" in resources,
                    },
                )
            )
        return out

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
        if self._owns_ray and os.getpid() == self._pid and not self._in_worker:
            ray.shutdown()
        self._timers.close()


def _upload(bundle: Bundle) -> str:
    """The bundle's URI in Ray's GCS, uploaded once per cluster: the zip's
    top level is the package, which is what Ray's py_modules unpack wants."""
    uri = f"gcs://_lucidity_{bundle.package}_{bundle.digest}.zip"
    if not packaging.package_exists(uri):
        packaging.upload_package_to_gcs(uri, bundle.data)
    return uri


# ---- the process's engine ----------------------------------------------------

_lock = threading.Lock()
_engine: RayEngine | None = None
_address: str | None = None


def connect(address: str | None) -> None:
    """Use the Ray cluster at `address` (None: RAY_ADDRESS, else a local Ray)."""
    global _address
    shutdown()
    _address = address


def get_ray_engine() -> RayEngine:
    global _engine
    engine = _engine
    if engine is not None and engine._pid == os.getpid() and not engine._closed:
        return engine
    with _lock:
        if _engine is None or _engine._pid != os.getpid() or _engine._closed:
            _engine = RayEngine(_address)
        return _engine


def shutdown() -> None:
    """Close this process's Ray engine (and the local Ray it started, if any)."""
    global _engine
    with _lock:
        engine, _engine = _engine, None
    if engine is not None and engine._pid == os.getpid():
        engine.close()
