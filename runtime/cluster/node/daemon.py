"""The node daemon: takes jobs from clients and runs them in worker processes.

It composes the parts and owns what they share: the jobs in flight (by
client and id), the event loop, the heartbeat to control, the node's
shared-memory folder, and the lifecycle (start, stop). The parts:

* `front.ClientFront`: the clients' socket, header validation, results back;
* `scheduler`: the pure policy (which job starts next, on which worker);
* `pool.WorkerPool`: the worker processes (`worker.py`) and their links;
* `bundles`: the bundle cache on disk and the fetches from clients;
* `output.NodeOutput`: the jobs' stdout/stderr, forwarded to their callers.

Workers are started ahead of time, each linked to the node by a socketpair
(`lucidity.cluster.wire._link`). The node keeps `slots` jobs running at once;
a worker that waits on a child job reports BLOCKED and gives its slot back
(a new worker is started if none is idle), so nested jobs cannot deadlock
even with one slot. A worker's death is seen through its pidfd, in the same
poller as the sockets. Nothing here imports the client: the node and the
client meet only on the wire.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from lucidity.cluster._daemon import announce, install_stop, watch_parent
from lucidity.cluster.node import scheduler
from lucidity.cluster.node.bundles import (
    BundleCache,
    BundleFetches,
    cache_max_bytes,
    default_cache_dir,
)
from lucidity.cluster.node.front import ClientFront
from lucidity.cluster.node.output import NodeOutput
from lucidity.cluster.node.pool import Worker, WorkerPool, worker_env
from lucidity.cluster.node.scheduler import JobQueue, Task
from lucidity.cluster.security import (
    DEFAULT_MAX_MESSAGE_MB,
    MAX_NODE_WORKERS,
    Guard,
    Keys,
    check_bind,
)
from lucidity.cluster.watch import rss_bytes
from lucidity.cluster.wire import _shm
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import EventLoop
from lucidity.errors import ClusterError, WorkerLostError

__all__ = ["NodeDaemon", "DEFAULT_NODE_PORT"]

log = logging.getLogger(__name__)

DEFAULT_NODE_PORT = 3031
HEARTBEAT_S = 0.5


@dataclass
class _Stats:
    done: int = 0
    failed: int = 0
    lost: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class NodeDaemon:
    def __init__(
        self,
        bind_address: str,
        control: str | None,
        workers: int,
        heartbeat_s: float = HEARTBEAT_S,
        cache_dir: str | None = None,
        keys: Keys | None = None,
        insecure: bool = False,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        cpus: frozenset[int] | None = None,
    ) -> None:
        if not 1 <= workers <= MAX_NODE_WORKERS:
            raise SystemExit(
                f"lucidity node: --workers must be in 1..{MAX_NODE_WORKERS}, "
                f"got {workers}"
            )
        if cpus:
            # Before any thread starts (zmq's I/O thread, the workers): they
            # inherit it.
            os.sched_setaffinity(0, cpus)
        check_bind(bind_address, keys, insecure, "node")
        self.node_id = uuid.uuid4().hex[:12]
        self.slots = workers
        self.control_address = control
        self.heartbeat_s = heartbeat_s
        self.ctx = zmq.Context()
        self.guard = Guard(self.ctx, keys, max_message_mb)
        self.loop = EventLoop()
        self.front = ClientFront(
            self.ctx,
            self.guard,
            bind_address,
            self.loop,
            self.node_id,
            submit=self._submit,
            cancel=self._cancel,
            bundle=self._on_bundle,
            gone=self._clients_gone,
            pump=self._pump,
        )
        self.endpoint = self.front.endpoint
        self.cache_dir = Path(cache_dir or default_cache_dir())
        try:
            self.cache = BundleCache(self.cache_dir, cache_max_bytes())
        except (ClusterError, OSError) as exc:
            raise SystemExit(f"lucidity node: bundle cache: {exc}") from None
        self.bundles = BundleFetches(
            self.cache,
            self.loop,
            self.node_id,
            send=self.front.send,
            ready=self._queue_task,
            fail=self._fail,
            keep=self._bundles_in_use,
        )
        # Where this node's workers put large results for same-host clients;
        # heartbeats tell clients, which use it if on this host (boot id).
        self.shm_dir = _shm.make_dir("n", self.node_id)
        self.shm_info = (
            {"host": _shm.boot_id(), "shm": self.shm_dir} if self.shm_dir else {}
        )
        self.ctl: zmq.Socket[Any] | None = None
        if control:
            self.ctl = self.ctx.socket(zmq.DEALER)
            self.ctl.linger = 0
            self.guard.client(self.ctl)
            self.ctl.connect(control)
        self.output = NodeOutput(self.loop, self.front.sock, self.node_id)
        self.front.untold = self.output.untold
        self.pool = WorkerPool(
            self.loop,
            self.output,
            self.slots,
            lambda: worker_env(
                self.endpoint,
                self.node_id,
                self.control_address,
                self.guard,
                self.shm_dir,
            ),
            on_done=self._on_done,
            on_lost=self._on_lost,
            pump=self._pump,
            queued=lambda: bool(self.queue),
        )
        self.workers: dict[bytes, Worker] = self.pool.workers
        # Queued jobs by nesting depth (see `scheduler.JobQueue`).
        self.queue = JobQueue()
        self.tasks: dict[tuple[bytes, int], Task] = {}
        self.stats = _Stats()

    # ---- lifecycle -------------------------------------------------------

    def run(self, parent_fd: int | None = None) -> None:
        install_stop(self.loop)
        if parent_fd is not None:
            watch_parent(self.loop, parent_fd)
        for _ in range(self.slots):
            self.pool.spawn()
        if self.ctl is not None:
            self._heartbeat()
        self.front.reap()
        log.info("node %s listening on %s", self.node_id, self.endpoint)
        announce(self.endpoint)
        try:
            self.loop.run()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.ctl is not None:
            try:
                self.ctl.send(self._heartbeat_frame(leaving=True), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.pool.close()
        self.output.close()
        for sock in (self.front.sock, self.ctl):
            if sock is not None:
                sock.close(0)
        self.guard.stop()
        self.ctx.term()
        _shm.remove_dir(self.shm_dir)

    # ---- control ---------------------------------------------------------

    def _heartbeat_frame(self, leaving: bool = False) -> bytes:
        return p.encode(
            p.MsgType.HEARTBEAT,
            {
                "node": self.node_id,
                "addr": self.endpoint,
                "workers": self.slots,
                "procs": len(self.workers),
                "busy": scheduler.load(self.workers.values())[0],
                "queued": len(self.queue),
                "pid": os.getpid(),
                # For `lucidity status --watch`: jobs finished, and memory.
                "done": self.stats.done + self.stats.failed,
                "mem": rss_bytes(
                    [os.getpid(), *(w.proc.pid for w in self.workers.values())]
                ),
                "leaving": leaving,
                # Clients fail a job sent over it at once (the link would drop).
                "max_mb": self.guard.max_message_mb,
                **self.shm_info,
            },
        )

    def _heartbeat(self) -> None:
        assert self.ctl is not None
        try:
            self.ctl.send(self._heartbeat_frame(), zmq.NOBLOCK)
        except zmq.Again:
            pass  # control unreachable: zmq reconnects; the next beat re-registers
        self.loop.call_later(self.heartbeat_s, self._heartbeat)

    # ---- jobs ------------------------------------------------------------

    def _submit(self, task: Task) -> None:
        self.tasks[(task.client, task.job_id)] = task
        bundle = task.header.get("bundle")
        if bundle is not None and not self.bundles.have(bundle):
            self.bundles.wait(task, bundle, task.client)
            return
        self.queue.append(task)

    def _queue_task(self, task: Task) -> None:
        self.queue.append(task)

    def _on_bundle(self, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
        self.bundles.on_bundle(header, payload)

    def _bundles_in_use(self) -> set[str]:
        """Bundles a worker imports from, or a job waits for: they stay."""
        keep = {w.bundle for w in self.workers.values() if w.bundle is not None}
        keep.update(
            t.header["bundle"] for t in self.tasks.values() if t.header.get("bundle")
        )
        return keep

    def _fail(self, task: Task, exc: BaseException) -> None:
        self.tasks.pop((task.client, task.job_id), None)
        self.front.reply(task, False, p.dumps_error(exc))

    def _cancel(self, client: bytes, job_id: int, grace_s: float) -> None:
        task = self.tasks.pop((client, job_id), None)
        if task is None:
            return
        task.header["cancelled"] = True
        try:
            self.queue.remove(task)
            return
        except ValueError:
            pass
        if self.bundles.drop(task):
            return
        for w in self.workers.values():
            if w.task is task:
                # SIGTERM lets the job clean up; SIGKILL after the job's
                # shutdown_retry_interval_ms. Replaced when its pidfd fires.
                self.pool.terminate(w, grace_s)

    def _clients_gone(self, dead: set[bytes]) -> None:
        for task in list(self.tasks.values()):
            if task.client in dead:
                log.warning(
                    "client gone: dropping job %d (%s)",
                    task.job_id,
                    task.header.get("target"),
                )
                self._cancel(task.client, task.job_id, 0.0)

    def _on_done(
        self, w: Worker, task: Task, header: dict[str, Any], payload: list[memoryview]
    ) -> None:
        ok = bool(header.get("ok"))
        task.header["pid"] = w.proc.pid  # where it ran, for the job's handle
        self.front.reply(task, ok, payload)  # first: its caller is waiting
        self.tasks.pop((task.client, task.job_id), None)
        if ok:
            self.stats.done += 1
        else:
            self.stats.failed += 1

    def _on_lost(self, w: Worker, code: int) -> None:
        """A worker exited while running a job: fail the job, unless it was
        stopped for a cancel."""
        task = w.task
        assert task is not None
        self.tasks.pop((task.client, task.job_id), None)
        if task.header.get("cancelled"):
            log.info("worker %s stopped for a cancelled job", w.wid.decode())
            return
        cause = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
        log.warning("worker %s %s while running a job", w.wid.decode(), cause)
        self.stats.lost += 1
        self.front.reply(
            task,
            False,
            p.dumps_error(
                WorkerLostError(
                    f"the worker running {task.header.get('target')} "
                    f"{cause} (node {self.node_id})"
                )
            ),
        )

    def _pump(self) -> None:
        """Start queued jobs while a slot is free; start workers if none fits."""
        self._dispatch()
        if len(self.workers) > self.slots:
            self.pool.trim()

    def _dispatch(self) -> None:
        if not self.queue.size:
            return
        todo = scheduler.dispatch(
            self.queue,
            self.slots,
            self.workers.values(),
            lambda digest: str(self.cache.path(digest)),
            may_retire=self.pool.respawn_timer is None,
        )
        for w, task, run in todo.starts:
            self.pool.send(w, [p.encode(p.MsgType.RUN, run), *task.payload])
        if todo.retire is not None:
            self.pool.retire(todo.retire)
        if todo.spawn:
            self.pool.spawn_or_wait()
