"""The I/O thread: the one owner of the client's shared sockets.

Caller threads hand it commands (`_post`: a deque and an inproc wake-up);
it sends without ever blocking (what a node's pipe does not take waits in
that node's queue, sent on POLLOUT), reads results and settles jobs (done,
or run again through placement), cancels, and keeps nodes honest: a node
with jobs out is pinged every check interval of those jobs and given up
after SILENT_CHECKS of silence. Caller threads never touch these sockets.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import zmq

from lucidity.cluster.client.pending import _fail, _Pending
from lucidity.cluster.client.placement import _Placement
from lucidity.cluster.client.results import _Outcome
from lucidity.cluster.client.state import IDLE_PING_S, SILENT_CHECKS
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import (
    NOBLOCK,
    messages,
    send_frames,
)
from lucidity.errors import (
    ClusterError,
)

__all__ = ["_Dispatcher"]

log = logging.getLogger("lucidity.cluster.client")

_PING = p.encode(p.MsgType.PING)


class _Dispatcher(_Placement):
    """The I/O thread's loop and handlers (see the module docstring)."""

    def _post(self, cmd: tuple[Any, ...]) -> None:
        # Checked and queued under the lock `close` takes to queue "stop":
        # a command queued after "stop" would never be read, and its caller
        # would wait forever.
        with self._wake_lock:
            if self._closed:
                raise ClusterError("the lucidity client is shut down")
            self._cmds.append(cmd)
            if self._woken:
                return  # a wake-up is on its way and the queue not yet read
            self._woken = True
            try:
                self._wake_w.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                raise ClusterError(
                    f"the lucidity client is shut down ({exc})"
                ) from None

    def _run(self) -> None:
        if self._ctl is not None:
            self._subscribe()
        self._ping_timer = self.loop.call_later(IDLE_PING_S, self._ping)
        try:
            self.loop.run()
        except BaseException:
            # Handlers' errors are caught in the loop: this is the loop itself.
            log.exception("lucidity client: the I/O thread failed; failing every job")
            raise
        finally:
            self._fail_all(ClusterError("the lucidity client shut down"))
            for watch in self._watches.values():
                watch.close()
            for sock in (self._wake_r, self._wake_w, self._ctl, *self._socks.values()):
                if sock is not None:
                    sock.close(0)
            self._close_links()
            self.ctx.term()

    def _fail_all(self, exc: BaseException) -> None:
        for pending in [*self._inflight.values(), *self._parked]:
            if not pending.job.done():
                try:
                    _fail(pending.job, exc)
                except Exception:
                    pass
        self._inflight.clear()
        self._parked.clear()

    def _on_wake(self) -> None:
        for _ in messages(self._wake_r, copy=False):
            pass
        # Before reading the queue: a command queued from now on wakes us
        # again; one queued before is read below.
        self._woken = False
        while self._cmds:
            cmd = self._cmds.popleft()
            kind = cmd[0]
            if kind == "submit":
                self._place(cmd[1])
            elif kind == "settle":
                self._settle(cmd[1], cmd[2])
            elif kind == "silent":
                self._on_silent(cmd[1], cmd[2], cmd[3])
            elif kind == "open":
                self._sock(cmd[1])
            elif kind == "cancel":
                self._do_cancel(cmd[1])
            elif kind == "identity":
                self._new_identity(cmd[1], cmd[2])
            elif kind == "stop":
                self.loop.stop()
                return

    def _sock(self, addr: str) -> zmq.Socket[Any]:
        sock = self._socks.get(addr)
        if sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.linger = 0
            # A fixed identity: after a reconnect the node still knows us and
            # can deliver results it held (async_set_retry_interval_ms).
            sock.setsockopt(zmq.IDENTITY, self._identity)
            self._secure(sock, addr)
            sock.connect(addr)
            self._socks[addr] = sock
            self.loop.add_reader(sock, lambda: self._on_node_ready(sock, addr))
        return sock

    def _send(self, addr: str, frames: list[Any], job_id: int = 0) -> None:
        """Send to the node at `addr` without blocking: what its pipe does
        not take now waits in its queue (in order), sent on POLLOUT."""
        queue = self._outq.get(addr)
        if queue:
            queue.append((job_id, frames))
            return
        sock = self._sock(addr)
        try:
            send_frames(sock, frames, NOBLOCK)
        except zmq.Again:
            self._outq[addr] = collections.deque([(job_id, frames)])
            self.loop.set_writable(sock, True)

    def _on_node_ready(self, sock: zmq.Socket[Any], addr: str) -> None:
        queue = self._outq.get(addr)
        if queue:
            try:
                while queue:
                    # A multipart message is taken whole or not at all.
                    send_frames(sock, queue[0][1], NOBLOCK)
                    queue.popleft()
            except zmq.Again:
                pass
            if not queue:
                del self._outq[addr]
                self.loop.set_writable(sock, False)
        self._on_result(sock, addr)

    def _do_cancel(self, job_id: int) -> None:
        self._parked = [x for x in self._parked if x.job.job_id != job_id]
        pending = self._inflight.pop(job_id, None)
        if pending is not None:
            self._finish(pending)
        if pending is not None and pending.addr is not None:
            queue = self._outq.get(pending.addr)
            if queue:
                for entry in queue:
                    if entry[0] == job_id:
                        queue.remove(entry)  # never sent: nothing to stop
                        return
            grace = pending.options.shutdown_retry_interval_ms
            head = p.encode(p.MsgType.CANCEL, {"id": job_id, "grace_ms": grace})
            self._send(pending.addr, [head])

    def _on_result(self, sock: zmq.Socket[Any], addr: str) -> None:
        for frames in messages(sock, copy=False):
            self._last_heard[addr] = time.monotonic()
            result = self._node_message(sock, frames, addr)
            if result is None:
                continue
            job_id, header = result
            pending = self._inflight.get(job_id)
            payload = [f.buffer for f in frames[1:]]
            if pending is None or pending.job.done():
                self._inflight.pop(job_id, None)
                p.discard_payload(payload, self._shm_inbound)
                continue
            pending.job.node, pending.job.pid = header.get("node"), header.get("pid")
            self._settle(pending, self._outcome(header, payload, addr))

    def _settle(self, pending: _Pending, outcome: _Outcome) -> None:
        """Act on a job's result: finish it, or run it again (I/O thread)."""
        job = pending.job
        if outcome.lost is not None:
            self._retry_system(pending, *outcome.lost)
            return
        if not outcome.final(pending):
            pending.app_attempts += 1
            self._inflight.pop(job.job_id, None)
            if not pending.pinned:
                pending.addr = None
            self._place(pending)
            return
        self._inflight.pop(job.job_id, None)
        self._finish(pending)
        outcome.complete(job)

    def _ping(self) -> None:
        self._ping_timer = None  # this one: fired, nothing to cancel
        now = time.monotonic()
        check_ms: dict[str, int] = {}
        for x in self._inflight.values():
            if x.addr is not None:
                check_ms[x.addr] = min(check_ms.get(x.addr, x.check_ms), x.check_ms)
        self._arm_ping(min(check_ms.values(), default=IDLE_PING_S * 1000) / 1000)
        for addr in [a for a in self._last_heard if a not in check_ms]:
            del self._last_heard[addr]  # idle nodes owe us nothing
        silent = {}
        for addr, ms in check_ms.items():
            heard = self._last_heard.setdefault(addr, now)
            if now - heard > SILENT_CHECKS * ms / 1000:
                silent[addr] = now - heard
            elif not self._outq.get(addr):
                try:
                    self._sock(addr).send(_PING, zmq.NOBLOCK)
                except zmq.Again:
                    pass  # its pipe is full: its silence will tell
        if silent:
            self._give_up(silent)

    def _arm_ping(self, period: float) -> None:
        if self._ping_timer is not None:
            self.loop.cancel(self._ping_timer)
        self._ping_period = period
        self._ping_timer = self.loop.call_later(period, self._ping)

    def _on_silent(self, pending: _Pending, addr: str, seconds: float) -> None:
        """The fast path heard nothing from `addr` for SILENT_CHECKS
        intervals while `pending` ran there: as if the I/O thread had."""
        if any(n["addr"] == addr for n in self._nodes):
            self._give_up({addr: seconds})
        self._retry_system(pending, f"node at {addr} was lost")
