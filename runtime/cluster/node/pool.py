"""A node's worker pool: the worker processes, their links, their lives.

It owns the processes (`python -m lucidity.cluster.node.worker`, started
ahead of time), each worker's socketpair link (`lucidity.cluster.wire._link`)
and pidfd in the node's event loop, the sends to a worker that never block,
signals (cancel's SIGTERM then SIGKILL, retirement by STOP), the respawn
backoff after workers that die before READY, and letting go of surplus
workers. What a worker says is handed to the daemon (`on_done`, `on_lost`,
`pump`); it may not talk to clients or decide which job runs where (that is
`scheduler.py`'s), and it never imports the client.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lucidity.cluster.node.output import NodeOutput, WorkerPipes
from lucidity.cluster.node.scheduler import Task, respawn_delay, surplus
from lucidity.cluster.security import INSECURE_ENV, KEYS_ENV, MAX_MESSAGE_ENV, Guard
from lucidity.cluster.wire import _link, _shm
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import EventLoop

__all__ = ["Worker", "WorkerPool", "worker_env"]

log = logging.getLogger(__name__)

_STOP = p.encode(p.MsgType.STOP)

# Surplus idle workers are kept this long before they are let go.
SPARE_IDLE_S = 5.0


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


def worker_env(
    endpoint: str,
    node_id: str,
    control: str | None,
    guard: Guard,
    shm_dir: str | None,
) -> dict[str, str]:
    """A worker's environment: this one, plus where its node is, and the
    keys and limits it uses as a client (nested jobs)."""
    env = dict(os.environ)
    env["LUCIDITY_NODE"] = endpoint
    env["LUCIDITY_NODE_ID"] = node_id
    if control:
        env["LUCIDITY_CONTROL"] = control
    else:
        env.pop("LUCIDITY_CONTROL", None)
    # Workers are clients too (nested jobs): they use this node's keys.
    if guard.keys is not None:
        env[KEYS_ENV] = str(guard.keys.path)
        env.pop(INSECURE_ENV, None)
    else:
        env.pop(KEYS_ENV, None)
        env[INSECURE_ENV] = "1"  # not this user's default keys either
    env[MAX_MESSAGE_ENV] = str(guard.max_message_mb)
    if shm_dir is not None:
        env[_shm.NODE_DIR_ENV] = shm_dir
    else:
        env.pop(_shm.NODE_DIR_ENV, None)
    return env


class WorkerPool:
    """`slots` workers (more while jobs are blocked), started and replaced.

    `env()` gives a new worker's environment; `on_done(worker, task, header,
    payload)` takes a job's DONE, `on_lost(worker, exit code)` a worker that died with a job,
    `pump()` is called whenever a worker's state changed (a job may start),
    and `queued()` says whether jobs wait (to keep workers for them).
    """

    def __init__(
        self,
        loop: EventLoop,
        output: NodeOutput,
        slots: int,
        env: Callable[[], dict[str, str]],
        on_done: Callable[[Worker, Task, dict[str, Any], list[memoryview]], None],
        on_lost: Callable[[Worker, int], None],
        pump: Callable[[], None],
        queued: Callable[[], bool],
    ) -> None:
        self.loop = loop
        self.output = output
        self.slots = slots
        self.env = env
        self.on_done = on_done
        self.on_lost = on_lost
        self.pump = pump
        self.queued = queued
        self.workers: dict[bytes, Worker] = {}
        self._trim_timer: int | None = None
        # Workers dead before READY in a row, and the timer of the next start.
        self._early_exits = 0
        self.respawn_timer: int | None = None

    def spawn(self) -> Worker:
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
                # Never the node's own: the node reads these (output.py).
                stdout=pipes.child[0],
                stderr=pipes.child[1],
                env=self.env(),
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
        self.loop.add_reader(pidfd, lambda: self._on_exit(w))
        self.loop.add_reader(link.fileno(), lambda: self._on_link(w))
        return w

    def send(self, w: Worker, frames: list[Any]) -> None:
        """Send to a worker; what its link does not take at once goes out
        when the link is writable (the node never blocks on a worker)."""
        try:
            if w.writer.send(frames):
                self.loop.set_writable(w.link.fileno(), True)
        except OSError as exc:
            # It died: its pidfd reports the exit, and fails its job.
            log.info("worker %s: link closed (%s)", w.wid.decode(), exc)

    def kill(self, w: Worker) -> None:
        try:
            w.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass

    def terminate(self, w: Worker, grace_s: float) -> None:
        """Stop a worker for its job's cancel. Its DONE may already be in the
        link: were it given the next job, the signal (or the grace period's
        SIGKILL) would kill that job instead. So it takes no job after this,
        and is replaced when its pidfd reports the exit."""
        w.ready, w.retiring = False, True
        if grace_s <= 0:
            self.kill(w)
            return
        try:
            w.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        self.loop.call_later(
            grace_s, lambda: self.kill(w) if w.wid in self.workers else None
        )

    def retire(self, w: Worker) -> None:
        w.retiring = True
        self.send(w, [_STOP])
        w.ready = False

    def close(self) -> None:
        """Kill every worker and wait for it (the node is stopping)."""
        for w in list(self.workers.values()):
            self.kill(w)
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

    def _on_exit(self, w: Worker) -> None:
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
        if w.task is not None:
            self.on_lost(w, code)
        elif not w.greeted:
            self._early_exits += 1
            log.warning(
                "worker %s exited with %s before it was ready (%d in a row); "
                "the next starts in %.1f s",
                w.wid.decode(),
                code,
                self._early_exits,
                respawn_delay(self._early_exits),
            )
        else:
            log.info("worker %s exited (%s)", w.wid.decode(), code)
        if len(self.workers) < self.slots:
            self.spawn_or_wait()
        self.pump()

    def spawn_or_wait(self) -> None:
        """Start a worker now, or after workers that died before READY, when
        the backoff's timer fires (no second timer while one is set)."""
        if self._early_exits == 0:
            self.spawn()
        elif self.respawn_timer is None:
            self.respawn_timer = self.loop.call_later(
                respawn_delay(self._early_exits), self._respawn
            )

    def _respawn(self) -> None:
        self.respawn_timer = None
        # Up to the slots, and one at least when jobs wait (dispatch asked).
        wanted = self.slots - len(self.workers)
        for _ in range(max(1 if self.queued() else 0, wanted)):
            self.spawn()
        self.pump()

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
            self.pump()
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
        if task is not None:
            self.on_done(w, task, header, payload)

    def trim(self) -> None:
        """Let go of extra workers (started while others were blocked) once
        they have stayed surplus for SPARE_IDLE_S: nested jobs come in waves,
        and starting a worker costs far more than keeping one."""
        if self._trim_timer is None and surplus(self.workers.values(), self.slots) > 0:
            self._trim_timer = self.loop.call_later(SPARE_IDLE_S, self._trim_now)

    def _trim_now(self) -> None:
        self._trim_timer = None
        if self.queued():
            self.trim()
            return
        live = [w for w in self.workers.values() if not w.retiring]
        excess = surplus(live, self.slots)
        for w in live:
            if excess <= 0:
                break
            if w.ready and w.task is None:
                self.retire(w)
                excess -= 1
        self.trim()  # busy extras are looked at again later
