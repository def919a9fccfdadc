"""The node daemon: takes jobs from clients and runs them in worker processes.

Workers are started ahead of time, each linked to the node by a socketpair
(`lucidity.cluster.wire._link`). The node keeps `slots` jobs running at once; a worker that
waits on a child job reports BLOCKED and gives its slot back (a new worker is
started if none is idle), so nested jobs cannot deadlock even with one slot.
A worker's death is seen through its pidfd, in the same poller as the sockets.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from lucidity.bundle import BundleCache, cache_max_bytes
from lucidity.cluster._daemon import announce, bind, install_stop, watch_parent
from lucidity.cluster.node.output import NodeOutput, WorkerPipes
from lucidity.cluster.security import (
    DEFAULT_MAX_MESSAGE_MB,
    INSECURE_ENV,
    KEYS_ENV,
    MAX_MESSAGE_ENV,
    MAX_NODE_WORKERS,
    Guard,
    Keys,
    check_bind,
)
from lucidity.cluster.watch import rss_bytes
from lucidity.cluster.wire import _link, _shm
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import NOBLOCK, EventLoop, messages, send_frames
from lucidity.errors import ClusterError, MessageTooLargeError, WorkerLostError

__all__ = ["NodeDaemon", "DEFAULT_NODE_PORT"]

log = logging.getLogger(__name__)

DEFAULT_NODE_PORT = 3031
HEARTBEAT_S = 0.5
_STOP = p.encode(p.MsgType.STOP)


def default_cache_dir() -> str:
    """Where nodes keep fetched code bundles ($LUCIDITY_CACHE overrides)."""
    env = os.environ.get("LUCIDITY_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "lucidity", "bundles")


# Blocked jobs also lend their slots to jobs of their own depth, up to this
# many per slot: parents blocked on children are cheap, so a few more may
# wait at once (more children in flight), within a bound.
LEND_PER_SLOT = 3
# A bundle asked of a client must come within this; else its jobs fail.
FETCH_TIMEOUT_S = 30.0
# Deeper nesting than this is refused (a runaway recursion, not a workload).
MAX_DEPTH = 1000


class _Queue:
    """Queued jobs, one FIFO per nesting depth.

    A worker blocked on child jobs lends its slot, but only to jobs deeper
    than its own: the children it waits for, or theirs. A job of depth d
    may start while the workers running unblocked, plus the blocked ones of
    depth >= d, are fewer than the slots. So an app that submits 10,000
    nested jobs at once still runs `slots` of them at a time (not 10,000
    worker processes), and children always find a slot (no deadlock):
    workers stay within slots x (depth + 1).
    """

    def __init__(self) -> None:
        self.by_depth: dict[int, collections.deque[Task]] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, task: Task) -> None:
        self.by_depth.setdefault(task.depth, collections.deque()).append(task)
        self.size += 1

    def remove(self, task: Task) -> None:
        """Remove `task`; ValueError if it is not queued."""
        queue = self.by_depth.get(task.depth)
        if queue is None:
            raise ValueError("not queued")
        if queue and queue[0] is task:
            queue.popleft()
        else:
            queue.remove(task)
        if not queue:
            del self.by_depth[task.depth]
        self.size -= 1

    def next_eligible(
        self, slots: int, running: int, blocked_depths: list[int]
    ) -> Task | None:
        """The job to start next (deepest first), or None if none may start."""
        if not blocked_depths:  # nothing lent out: the deepest job, if a slot is free
            if running >= slots or not self.by_depth:
                return None
            return self.by_depth[max(self.by_depth)][0]
        for depth in sorted(self.by_depth, reverse=True):
            blocked = sum(1 for d in blocked_depths if d >= depth)
            held = max(0, blocked - LEND_PER_SLOT * slots)
            if running + held < slots:
                return self.by_depth[depth][0]
        return None


# Workers that die before READY (a broken import, a bad environment) are
# started again after a delay that doubles per such death in a row, from the
# first to the last of these: a crash loop costs a process start per few
# seconds, not one per 30 ms. One READY ends it.
RESPAWN_FIRST_S = 0.1
RESPAWN_MAX_S = 5.0

# Surplus idle workers are kept this long before they are let go.
SPARE_IDLE_S = 5.0

# A client pings the nodes running its jobs every second; silent this long, it died.
CLIENT_DEAD_AFTER_S = 10.0


@dataclass(slots=True)
class Task:
    client: bytes
    job_id: int
    header: dict[str, Any]
    payload: list[zmq.Frame]
    # How deeply nested: 0 for an app's job, its parent's depth + 1 for a
    # job submitted from inside a job (see `_dispatch`).
    depth: int = 0


@dataclass(slots=True)
class Worker:
    wid: bytes
    proc: subprocess.Popen[bytes]
    pidfd: int
    # The node's end of the link (non-blocking), and its two directions.
    link: socket.socket
    reader: _link.Reader
    writer: _link.Writer
    ready: bool = False
    task: Task | None = None
    blocked: bool = False
    # The one bundle this worker imports from, adopted with its first job.
    bundle: str | None = None
    retiring: bool = False
    # It said READY once: a worker that dies before is one that cannot start.
    greeted: bool = False
    # Its stdout and stderr, read by the node (lucidity.cluster.node.output).
    pipes: WorkerPipes | None = None

    def running(self) -> tuple[tuple[bytes, int, Any, bool] | None, int]:
        """What its output is a part of: (client, job id, target, whether
        the client wants it) of its job, or None; and its pid."""
        t = self.task
        if t is None:
            return None, self.proc.pid
        return (
            t.client,
            t.job_id,
            t.header.get("target"),
            not t.header.get("quiet"),
        ), (self.proc.pid)


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
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.linger = 0
        # Tell us when a result's client is not connected, instead of dropping it.
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A client that reconnects under its identity takes the old one's place.
        self.front.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.guard.server(self.front)
        self.endpoint = bind(self.front, bind_address, "node")
        self.cache_dir = Path(cache_dir or default_cache_dir())
        try:
            self.cache = BundleCache(self.cache_dir, cache_max_bytes())
        except (ClusterError, OSError) as exc:
            raise SystemExit(f"lucidity node: bundle cache: {exc}") from None
        self.awaiting: dict[str, list[Task]] = {}
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
        self.loop = EventLoop()
        self.loop.add_reader(self.front, self._on_client)
        self.output = NodeOutput(self.loop, self.front, self.node_id)
        self.workers: dict[bytes, Worker] = {}
        # Queued jobs by nesting depth (see `_dispatch`).
        self.queue = _Queue()
        self.tasks: dict[tuple[bytes, int], Task] = {}
        self.stats = _Stats()
        self._client_handlers = {
            p.MsgType.SUBMIT: self._on_submit,
            p.MsgType.CANCEL: self._on_cancel,
            p.MsgType.PING: self._on_ping,
            p.MsgType.BUNDLE: self._on_bundle,
        }
        self.client_seen: dict[bytes, float] = {}
        self._trim_timer: int | None = None
        # Workers dead before READY in a row, and the timer of the next start.
        self._early_exits = 0
        self._respawn_timer: int | None = None

    # ---- lifecycle -------------------------------------------------------

    def run(self, parent_fd: int | None = None) -> None:
        install_stop(self.loop)
        if parent_fd is not None:
            watch_parent(self.loop, parent_fd)
        for _ in range(self.slots):
            self._spawn()
        if self.ctl is not None:
            self._heartbeat()
        self._reap_clients()
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
        for w in list(self.workers.values()):
            self._kill(w)
        for w in list(self.workers.values()):
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            os.close(w.pidfd)
            w.link.close()
            if w.pipes is not None:
                self.output.detach(w.pipes, w.running)
        self.output.close()
        for sock in (self.front, self.ctl):
            if sock is not None:
                sock.close(0)
        self.guard.stop()
        self.ctx.term()
        _shm.remove_dir(self.shm_dir)

    # ---- control ---------------------------------------------------------

    def _load(self) -> tuple[int, list[int]]:
        """Workers running a job unblocked, and the depths of the blocked ones."""
        running = 0
        blocked: list[int] = []
        for w in self.workers.values():
            if w.task is not None:
                if w.blocked:
                    blocked.append(w.task.depth)
                else:
                    running += 1
        return running, blocked

    def _heartbeat_frame(self, leaving: bool = False) -> bytes:
        return p.encode(
            p.MsgType.HEARTBEAT,
            {
                "node": self.node_id,
                "addr": self.endpoint,
                "workers": self.slots,
                "procs": len(self.workers),
                "busy": self._load()[0],
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

    # ---- workers ---------------------------------------------------------

    def _spawn(self) -> Worker:
        env = dict(os.environ)
        env["LUCIDITY_NODE"] = self.endpoint
        env["LUCIDITY_NODE_ID"] = self.node_id
        if self.control_address:
            env["LUCIDITY_CONTROL"] = self.control_address
        else:
            env.pop("LUCIDITY_CONTROL", None)
        # Workers are clients too (nested jobs): they use this node's keys.
        if self.guard.keys is not None:
            env[KEYS_ENV] = str(self.guard.keys.path)
            env.pop(INSECURE_ENV, None)
        else:
            env.pop(KEYS_ENV, None)
            env[INSECURE_ENV] = "1"  # not this user's default keys either
        env[MAX_MESSAGE_ENV] = str(self.guard.max_message_mb)
        if self.shm_dir is not None:
            env[_shm.NODE_DIR_ENV] = self.shm_dir
        else:
            env.pop(_shm.NODE_DIR_ENV, None)
        pipes = WorkerPipes()
        link, theirs = socket.socketpair()
        for end in (link, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _link.BUFFER_BYTES)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _link.BUFFER_BYTES)
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lucidity.cluster.node.worker",
                    str(theirs.fileno()),
                ],
                stdin=subprocess.PIPE,
                # Never the node's own: the node reads these (lucidity.cluster.node.output).
                stdout=pipes.child[0],
                stderr=pipes.child[1],
                env=env,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            link.close()
            pipes.close()
            raise
        finally:
            theirs.close()
        pipes.close_child()
        link.setblocking(False)
        pidfd = os.pidfd_open(proc.pid)
        w = Worker(
            wid=f"w{proc.pid}".encode(),
            proc=proc,
            pidfd=pidfd,
            link=link,
            reader=_link.Reader(link),
            writer=_link.Writer(link),
            pipes=pipes,
        )
        self.output.attach(pipes, w.running)
        self.workers[w.wid] = w
        self.loop.add_reader(pidfd, lambda: self._on_worker_exit(w))
        self.loop.add_reader(link.fileno(), lambda: self._on_link(w))
        return w

    def _send_worker(self, w: Worker, frames: list[Any]) -> None:
        """Send to a worker; what its link does not take at once goes out
        when the link is writable (the node never blocks on a worker)."""
        try:
            if w.writer.send(frames):
                self.loop.set_writable(w.link.fileno(), True)
        except OSError as exc:
            # It died: its pidfd reports the exit, and fails its job.
            log.info("worker %s: link closed (%s)", w.wid.decode(), exc)

    def _kill(self, w: Worker) -> None:
        try:
            w.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _terminate(self, w: Worker, grace_s: float) -> None:
        """Stop a worker for its job's cancel. Its DONE may already be in the
        link: were it given the next job, the signal (or the grace period's
        SIGKILL) would kill that job instead. So it takes no job after this,
        and is replaced when its pidfd reports the exit."""
        w.ready, w.retiring = False, True
        if grace_s <= 0:
            self._kill(w)
            return
        try:
            w.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        self.loop.call_later(
            grace_s, lambda: self._kill(w) if w.wid in self.workers else None
        )

    def _on_worker_exit(self, w: Worker) -> None:
        self.loop.remove_reader(w.pidfd)
        os.close(w.pidfd)
        # What it sent before it exited is still in the link, and may be the
        # DONE of its job (a worker that hit a limit answers, then exits).
        # Read it as from a worker that takes no more jobs.
        w.ready, w.retiring = False, True
        while self._read_link(w):
            pass
        if w.pipes is not None:
            self.output.detach(w.pipes, w.running)
        self.loop.remove_reader(w.link.fileno())
        w.link.close()
        code = w.proc.wait()
        self.workers.pop(w.wid, None)
        if w.proc.stdin is not None:
            w.proc.stdin.close()
        task = w.task
        if task is not None:
            self.tasks.pop((task.client, task.job_id), None)
            if task.header.get("cancelled"):
                log.info("worker %s stopped for a cancelled job", w.wid.decode())
            else:
                cause = (
                    f"killed by signal {-code}" if code < 0 else f"exited with {code}"
                )
                log.warning("worker %s %s while running a job", w.wid.decode(), cause)
                self.stats.lost += 1
                self._reply(
                    task,
                    False,
                    p.dumps_error(
                        WorkerLostError(
                            f"the worker running {task.header.get('target')} "
                            f"{cause} (node {self.node_id})"
                        )
                    ),
                )
        elif not w.greeted:
            self._early_exits += 1
            log.warning(
                "worker %s exited with %s before it was ready (%d in a row); "
                "the next starts in %.1f s",
                w.wid.decode(),
                code,
                self._early_exits,
                self._respawn_delay(),
            )
        else:
            log.info("worker %s exited (%s)", w.wid.decode(), code)
        if len(self.workers) < self.slots:
            self._spawn_or_wait()
        self._pump()

    def _respawn_delay(self) -> float:
        doublings = max(0, self._early_exits - 1)
        return min(RESPAWN_MAX_S, RESPAWN_FIRST_S * 2.0**doublings)

    def _spawn_or_wait(self) -> None:
        """Start a worker now, or after workers that died before READY, when
        the backoff's timer fires (no second timer while one is set)."""
        if self._early_exits == 0:
            self._spawn()
        elif self._respawn_timer is None:
            self._respawn_timer = self.loop.call_later(
                self._respawn_delay(), self._respawn
            )

    def _respawn(self) -> None:
        self._respawn_timer = None
        # Up to the slots, and one at least when jobs wait (`_dispatch` asked).
        for _ in range(max(1 if self.queue else 0, self.slots - len(self.workers))):
            self._spawn()
        self._pump()

    def _on_link(self, w: Worker) -> None:
        fd = w.link.fileno()
        if w.writer.pending:
            try:
                if not w.writer.flush():
                    self.loop.set_writable(fd, False)
            except OSError:
                w.writer.pending.clear()  # it died: its pidfd reports the exit
        self._read_link(w)

    def _read_link(self, w: Worker) -> bool:
        """Handle what has come in full from a worker, after one read of its
        link; False when there was nothing to read or the link is closed."""
        try:
            batch = w.reader.read()
        except BlockingIOError:
            return False
        except (EOFError, OSError):
            # It died (its pidfd reports the exit): stop watching a closed link.
            self.loop.remove_reader(w.link.fileno())
            return False
        for frames in batch:
            try:
                msg = p.decode(frames[0])
            except p.FrameError as exc:
                log.warning("dropped a bad frame from worker %s: %s", w.wid, exc)
                continue
            if msg.type == p.MsgType.READY:
                w.ready = w.greeted = True
                self._early_exits = 0
            elif msg.type == p.MsgType.DONE:
                self._on_done(w, msg.header, frames[1:])
            elif msg.type == p.MsgType.BLOCKED:
                w.blocked = True
            elif msg.type == p.MsgType.UNBLOCKED:
                w.blocked = False
            self._pump()
        return True

    def _on_done(
        self, w: Worker, header: dict[str, Any], payload: list[memoryview]
    ) -> None:
        if w.pipes is not None:  # its lines first, then its result
            self.output.job_done(w.pipes, w.running)
        task = w.task
        w.task = None
        w.blocked = False
        if header.get("retire"):
            w.ready = False  # it exits after a limit error; replaced on exit
        if task is None:
            return
        ok = bool(header.get("ok"))
        task.header["pid"] = w.proc.pid  # where it ran, for the job's handle
        self._reply(task, ok, payload)  # first: its caller is waiting
        self.tasks.pop((task.client, task.job_id), None)
        if ok:
            self.stats.done += 1
        else:
            self.stats.failed += 1

    def _retire(self, w: Worker) -> None:
        w.retiring = True
        self._send_worker(w, [_STOP])
        w.ready = False

    def _idle_for(self, bundle: str | None) -> Worker | None:
        """An idle worker that may run a job of `bundle`: one already serving
        it, else a fresh one (which adopts it)."""
        fresh = None
        for w in self.workers.values():
            if not w.ready or w.task is not None or w.retiring:
                continue
            if w.bundle == bundle:
                return w
            if w.bundle is None and fresh is None:
                fresh = w
        return fresh

    def _pump(self) -> None:
        """Start queued jobs while a slot is free; start workers if none fits."""
        self._dispatch()
        if len(self.workers) > self.slots:
            self._trim()

    def _dispatch(self) -> None:
        queue = self.queue
        if not queue.size:
            return
        running, blocked = self._load()
        while queue.size:
            task = queue.next_eligible(self.slots, running, blocked)
            if task is None:
                return
            bundle = task.header.get("bundle")
            w = self._idle_for(bundle)
            if w is None:
                starting = sum(
                    1 for x in self.workers.values() if not x.ready and not x.retiring
                )
                if starting == 0:
                    # Idle workers bound to another bundle make room for a fresh one.
                    other = next(
                        (
                            x
                            for x in self.workers.values()
                            if x.ready and x.task is None and not x.retiring
                        ),
                        None,
                    )
                    if other is not None and self._respawn_timer is None:
                        self._retire(other)
                    self._spawn_or_wait()
                return
            queue.remove(task)
            w.task = task
            running += 1
            run: dict[str, Any] = {
                "target": task.header["target"],
                "depth": task.depth,
            }
            for limit in ("memory", "fuel"):  # checked: ints, or absent
                if task.header.get(limit) is not None:
                    run[limit] = task.header[limit]
            if task.header.get("batch") is not None:
                run["batch"] = task.header["batch"]
            if task.header.get("shm"):
                run["shm"] = 1  # the caller takes results through shared memory
            if task.header.get("kw"):
                run["kw"] = 1  # the payload is (args, kwargs)
            if bundle is not None and w.bundle != bundle:
                # Once per worker: it keeps its one bundle on its path.
                w.bundle = bundle
                run["bundle_path"] = str(self._bundle_path(bundle))
            head = p.encode(p.MsgType.RUN, run)
            self._send_worker(w, [head, *task.payload])

    def _trim(self) -> None:
        """Let go of extra workers (started while others were blocked) once
        they have stayed surplus for SPARE_IDLE_S: nested jobs come in waves,
        and starting a worker costs far more than keeping one."""
        if self._trim_timer is None and self._surplus() > 0:
            self._trim_timer = self.loop.call_later(SPARE_IDLE_S, self._trim_now)

    def _surplus(self) -> int:
        live = [w for w in self.workers.values() if not w.retiring]
        return len(live) - self.slots - sum(1 for w in live if w.blocked)

    def _trim_now(self) -> None:
        self._trim_timer = None
        if self.queue:
            self._trim()
            return
        live = [w for w in self.workers.values() if not w.retiring]
        blocked = sum(1 for w in live if w.blocked)
        excess = len(live) - self.slots - blocked
        for w in live:
            if excess <= 0:
                break
            if w.ready and w.task is None:
                self._retire(w)
                excess -= 1
        self._trim()  # busy extras are looked at again later

    def _bundle_path(self, digest: str) -> Path:
        return self.cache.path(digest)

    # ---- clients ---------------------------------------------------------

    def _on_client(self) -> None:
        for frames in messages(self.front, copy=False):
            if len(frames) < 2:
                log.warning("dropped a message of %d frames", len(frames))
                continue
            ident = frames[0].bytes
            if not self.guard.allows(frames[1]):
                self.guard.refuse(self.front, ident, frames[1])
                continue
            self.client_seen[ident] = time.monotonic()
            try:
                msg = p.decode(frames[1].buffer)
                handler = self._client_handlers[msg.type]
            except (p.FrameError, KeyError) as exc:
                log.warning("dropped a bad frame from a client: %s", exc)
                continue
            try:
                handler(ident, msg.header, frames[2:])
            except (KeyError, TypeError, ValueError) as exc:  # FrameError too
                log.warning("dropped a malformed %s: %r", msg.type.name, exc)
            # Per message, not after the burst: a job starts before the next
            # message (or the check for one) is read.
            self._pump()

    def _on_submit(
        self, ident: bytes, header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        # The whole header first: past this point nothing may fail on it
        # (a slot taken by a job that cannot start stays taken).
        p.check_submit(header, MAX_DEPTH)
        if not payload:
            raise ValueError("no payload")
        job_id: int = header["id"]
        bundle = header.get("bundle")
        depth: int = header.get("depth") or 0
        task = Task(ident, job_id, header, payload, depth)
        self.tasks[(ident, job_id)] = task
        if bundle is not None and not self._have_bundle(bundle):
            waiting = self.awaiting.setdefault(bundle, [])
            if not waiting:
                self._fetch(bundle, ident)
            waiting.append(task)
            return
        self.queue.append(task)

    def _fetch(self, digest: str, ident: bytes) -> None:
        """Ask the client `ident` for a bundle; its jobs fail if no bundle
        comes within FETCH_TIMEOUT_S (that client died, or cannot send it)."""
        head = p.encode(p.MsgType.FETCH, {"bundle": digest})
        try:
            self.front.send_multipart([ident, head], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("cannot ask a client for bundle %s: %s", digest[:12], exc)

        def expired() -> None:
            if self.awaiting.get(digest) is waiting:
                self._fail_awaiting(
                    digest, f"did not arrive within {FETCH_TIMEOUT_S:.0f} s"
                )

        waiting = self.awaiting[digest]
        self.loop.call_later(FETCH_TIMEOUT_S, expired)

    def _fail_awaiting(self, digest: str, why: str) -> None:
        """Fail every job waiting for bundle `digest`."""
        log.warning("bundle %s %s", digest[:12], why)
        for task in self.awaiting.pop(digest, []):
            self.tasks.pop((task.client, task.job_id), None)
            self._reply(
                task,
                False,
                p.dumps_error(
                    ClusterError(
                        f"the code bundle {digest[:12]} of {task.header.get('target')} "
                        f"{why} (node {self.node_id})"
                    )
                ),
            )

    def _on_bundle(
        self, ident: bytes, header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        digest = str(header["bundle"])
        if digest not in self.awaiting:
            return  # not asked for (or already here): ignore
        if header.get("missing"):
            self._fail_awaiting(digest, "is not known to the client asked for it")
            return
        data = payload[0].bytes if payload else b""
        if hashlib.sha256(data).hexdigest() != digest:
            self._fail_awaiting(digest, "sent by the client does not match its hash")
            return
        # Bundles a worker imports from, or a job waits for, stay.
        keep = {w.bundle for w in self.workers.values() if w.bundle is not None}
        keep.update(
            t.header["bundle"] for t in self.tasks.values() if t.header.get("bundle")
        )
        try:
            self.cache.put(digest, data, keep)
        except OSError as exc:
            self._fail_awaiting(digest, f"could not be cached: {exc}")
            return
        waiting = self.awaiting.pop(digest)
        log.info("cached bundle %s (%d bytes)", digest[:12], len(data))
        for task in waiting:
            self.queue.append(task)

    def _have_bundle(self, digest: str) -> bool:
        return self.cache.has(digest)

    def _on_ping(
        self, ident: bytes, header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        try:
            # Its identity: a node restarted on this address is another one.
            pong = p.encode(p.MsgType.PONG, {"node": self.node_id})
            self.front.send_multipart([ident, pong], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _reap_clients(self) -> None:
        """Drop the jobs of clients that stopped pinging (they died)."""
        self.loop.call_later(CLIENT_DEAD_AFTER_S / 2, self._reap_clients)
        now = time.monotonic()
        dead = {c for c, t in self.client_seen.items() if now - t > CLIENT_DEAD_AFTER_S}
        if not dead:
            return
        for ident in dead:
            del self.client_seen[ident]
        for task in list(self.tasks.values()):
            if task.client in dead:
                log.warning(
                    "client gone: dropping job %d (%s)",
                    task.job_id,
                    task.header.get("target"),
                )
                self._on_cancel(task.client, {"id": task.job_id}, [])

    def _on_cancel(
        self, ident: bytes, header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        p.check_cancel(header)
        task = self.tasks.pop((ident, header["id"]), None)
        if task is None:
            return
        task.header["cancelled"] = True
        try:
            self.queue.remove(task)
            return
        except ValueError:
            pass
        for waiting in self.awaiting.values():
            if task in waiting:
                waiting.remove(task)
                return
        grace_s = (header.get("grace_ms") or 0) / 1000
        for w in self.workers.values():
            if w.task is task:
                # SIGTERM lets the job clean up; SIGKILL after the job's
                # shutdown_retry_interval_ms. Replaced when its pidfd fires.
                self._terminate(w, grace_s)

    def _reply(self, task: Task, ok: bool, payload: list[Any]) -> None:
        limit = task.header.get("max_mb")
        if type(limit) is int and payload:
            size = max(len(f) for f in payload)
            if size > limit * 1024 * 1024:
                # Over the caller's LUCIDITY_MAX_MESSAGE_MB its socket would
                # drop ours and the result: say so instead (once: not a loss).
                ok, payload = False, p.dumps_error(
                    MessageTooLargeError(
                        f"the result of {task.header.get('target')} is a message "
                        f"of {size:,} bytes, over the caller's limit of {limit} "
                        f"MiB (LUCIDITY_MAX_MESSAGE_MB; node {self.node_id})"
                    )
                )
        head = p.encode(
            p.MsgType.RESULT,
            {
                "id": task.job_id,
                "ok": ok,
                "node": self.node_id,
                "pid": task.header.get("pid"),
            },
        )
        self._deliver(task, [task.client, head, *payload])

    def _deliver(self, task: Task, frames: list[Any]) -> None:
        """Send a result; while its client is unreachable (reconnecting), try
        again every async_set_retry_interval_ms until the client is reaped."""
        try:
            send_frames(self.front, frames, NOBLOCK)
            return
        except zmq.ZMQError as exc:
            if task.client not in self.client_seen:
                log.warning("job %d: its client is gone; result dropped", task.job_id)
                return
            log.info("job %d: client unreachable (%s); will retry", task.job_id, exc)
        interval = (task.header.get("set_ms") or 100) / 1000  # checked: >= 1
        self.loop.call_later(interval, lambda: self._deliver(task, frames))
