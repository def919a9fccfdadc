"""The fast path of blocking calls: a caller thread runs its own job.

`run` sends the job on the calling thread's own DEALER to the node and waits
for its result there (answering the node's FETCH, pinging it every check
interval); anything but a plain ending (a timeout or retries, a lost run, a
silent or restarted node, a refusal) is handed to the I/O thread as a
command. Owns each caller thread's sockets (`_ThreadLink`); it may read the
membership state but never the I/O thread's sockets or queues.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import zmq

from lucidity._options import JobOptions
from lucidity.cluster.client.dispatch import _Dispatcher
from lucidity.cluster.client.pending import _fail, _random_addr, _restarted
from lucidity.cluster.client.results import _Outcome
from lucidity.cluster.client.state import SILENT_CHECKS
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import (
    NOBLOCK,
    recv_frames,
    send_frames,
)
from lucidity.errors import (
    ClusterError,
)
from lucidity.handle import blocking

if TYPE_CHECKING:
    from lucidity.cluster.client.pending import _Pending

__all__ = ["_FastPath", "_LinkSock", "_ThreadLink"]

log = logging.getLogger("lucidity.cluster.client")

_PING = p.encode(p.MsgType.PING)


def _close_sockets(socks: dict[str, _LinkSock], pid: int) -> None:
    # Never in a forked child: the sockets are the parent's.
    if os.getpid() == pid:
        for entry in socks.values():
            entry.sock.close(0)
    socks.clear()


class _LinkSock:
    """A caller thread's DEALER to one node, and the receive timeout it has
    now (set only when a job's check interval differs from the last one's)."""

    __slots__ = ("sock", "timeout_ms")

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self.timeout_ms = -1


class _ThreadLink:
    """One caller thread's sockets for the fast path of blocking calls: a
    DEALER per node address, under an identity of its own (to a node, one
    more client).

    The owner holds `lock` while it uses them. `Client.close` (I/O thread)
    marks the link `dead`, then closes the sockets if the lock is free; if
    not, the owner does when it lets go (`release`). A thread that ends
    drops its link (it lives in a `threading.local`) and the finalizer
    closes the sockets.
    """

    __slots__ = ("identity", "socks", "lock", "dead", "__weakref__")

    def __init__(self, identity: bytes) -> None:
        self.identity = identity
        self.socks: dict[str, _LinkSock] = {}
        self.lock = threading.Lock()
        # Closed for good (the client is closing): no new sockets.
        self.dead = False
        weakref.finalize(self, _close_sockets, self.socks, os.getpid()).atexit = False

    def close(self) -> None:
        """For `Client.close`: no more sockets; these closed now or by
        their owner, whichever comes last (so one of them does)."""
        self.dead = True
        self._close_if_free()

    def release(self) -> None:
        """The owner is done with its sockets for now."""
        self.lock.release()
        if self.dead:
            self._close_if_free()

    def _close_if_free(self) -> None:
        if self.lock.acquire(blocking=False):
            try:
                _close_sockets(self.socks, os.getpid())
            finally:
                self.lock.release()


class _FastPath(_Dispatcher):
    """Blocking calls from their caller's thread (see the module docstring)."""

    def run(
        self,
        target: str,
        options: JobOptions,
        args: Any,
        kwargs: Mapping[str, Any] | None = None,
        local: bool = False,
        addr: str | None = None,
    ) -> Any:
        """Run `target(*args, **kwargs)` and wait for its result (`_local`,
        `_remote`).

        What `submit(..., blocking=True).result()` does, by a shorter way
        when it can: the calling thread sends the job and waits for its
        result on a socket of its own (`_run_inline`), instead of handing it
        to the I/O thread and being woken by it. Anything but a plain ending
        is handed to the I/O thread, which carries on as with a submission.
        """
        pending = self._pending(
            target, options, args, local, addr, blocking=True, kwargs=kwargs
        )
        handover = self._run_inline(pending)
        if handover is not None:
            if handover[0] == "done":
                outcome: _Outcome = handover[1]
                if pending._job is None:
                    # Nobody holds a handle: no future to complete and wake,
                    # and no done callback to release the argument files.
                    if pending.files:
                        self._shm_own.release(pending.files)
                    if outcome.error is not None:
                        raise outcome.error
                    return outcome.value
                outcome.complete(pending.job)
            else:
                pending.job  # noqa: B018 - made here, before the I/O thread has it
                self._post(handover)
        return pending.job.result()

    def _run_inline(self, pending: _Pending) -> tuple[Any, ...] | None:
        """Run `pending` from the calling thread: ("done", outcome) when it
        ended there, None when its handle is already complete, else the
        I/O-thread command that takes it over."""
        options = pending.options
        if options.timeout is not None or options.retries or self._closed:
            # Their timers and re-runs are the I/O thread's.
            return ("submit", pending)
        addr = pending.addr
        if addr is None:
            nodes = self._nodes
            if not nodes or pending.same_host:
                # The I/O thread waits for a node, or picks one of this host.
                return ("submit", pending)
            addr = _random_addr(nodes)
        if addr in self._refused:
            return ("submit", pending)  # it fails with the refusal
        limits = self._limits
        if limits and pending.size > limits.get(addr, pending.size):
            return ("submit", pending)  # another node, or it fails with the limit
        link = self._link()
        # Not free: this thread is already in a call (a signal handler).
        if not link.lock.acquire(blocking=False):
            return ("submit", pending)
        try:
            if link.dead:
                return ("submit", pending)  # closing: `_post` says so
            return self._exchange(link, pending, addr)
        finally:
            link.release()

    def _link(self) -> _ThreadLink:
        try:
            link: _ThreadLink = self._local.link
            return link
        except AttributeError:
            pass
        link = _ThreadLink(self._identity + b"/t%d" % next(self._link_ids))
        self._local.link = link
        with self._links_lock:
            self._links.add(link)
        return link

    def _link_sock(self, link: _ThreadLink, addr: str) -> _LinkSock:
        """This thread's socket to `addr`, as `_sock` makes the I/O thread's."""
        entry = link.socks.get(addr)
        if entry is not None:
            return entry
        # Sockets to nodes gone from the cluster would reconnect forever.
        known = {n["addr"] for n in self._nodes}
        for old in [a for a in link.socks if a not in known and a != self._local_node]:
            link.socks.pop(old).sock.close(0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.setsockopt(zmq.IDENTITY, link.identity)
        # Handshakes are watched on the I/O thread's socket to the same
        # address, with the same keys (it reports a refusal in `_refused`).
        self._secure(sock, addr, watched=False)
        sock.connect(addr)
        entry = link.socks[addr] = _LinkSock(sock)
        if addr not in self._socks:
            self._post(("open", addr))
        return entry

    def _exchange(
        self, link: _ThreadLink, pending: _Pending, addr: str
    ) -> tuple[Any, ...] | None:
        """Send `pending` to `addr` on this thread's socket and wait for its
        result there, answering the node's FETCH and pinging it every check
        interval; see `_run_inline`."""
        job_id = pending.job_id
        try:
            entry = self._link_sock(link, addr)
            sock = entry.sock
            check_ms = pending.check_ms
            if entry.timeout_ms != check_ms:
                sock.rcvtimeo = entry.timeout_ms = check_ms
            send_frames(sock, pending.frames, NOBLOCK)  # the last thing tried
            pending.node = node = self._node_ids.get(addr)
        except zmq.ZMQError:
            # Not sent: the I/O thread sends it (or, closing, `_post` says so).
            return ("submit", pending)
        silent_s = SILENT_CHECKS * check_ms / 1000
        sent = heard = time.monotonic()
        try:
            with blocking():
                while True:
                    # A blocking receive, not a poll: one call per message.
                    try:
                        frames = recv_frames(sock)
                    except zmq.Again:
                        silence = time.monotonic() - heard
                        pending.addr = addr
                        if addr in self._refused:
                            return ("submit", pending)  # it fails with the refusal
                        if self._lost_at.get(addr, 0.0) >= sent:
                            # Control (or the I/O thread) gave the node up.
                            lost = (f"node at {addr} was lost", ClusterError)
                            return ("settle", pending, _Outcome(lost=lost))
                        now = self._node_ids.get(addr)
                        if node is not None and now != node:
                            # Restarted: the new process never had the job.
                            lost = (_restarted(addr, node, now), ClusterError)
                            return ("settle", pending, _Outcome(lost=lost))
                        if silence > silent_s:
                            return ("silent", pending, addr, silence)
                        sock.send(_PING, zmq.NOBLOCK)
                        continue
                    heard = time.monotonic()
                    result = self._node_message(sock, frames, addr)
                    if result is None:
                        continue
                    payload = [f.buffer for f in frames[1:]]
                    if result[0] != job_id:
                        # An earlier job's, handed over to the I/O thread.
                        p.discard_payload(payload, self._shm_inbound)
                        continue
                    outcome = self._outcome(result[1], payload, addr)
                    if outcome.final(pending):
                        return ("done", outcome)
                    pending.addr = addr
                    return ("settle", pending, outcome)
        except zmq.ZMQError as exc:
            link.socks.pop(addr, None)
            sock.close(0)
            if exc.errno == zmq.ETERM:
                # `close` terminates the context under us (and the link is
                # dead: its other sockets are closed on the way out).
                _fail(pending.job, ClusterError("the lucidity client shut down"))
                return None
            cause = f"its connection to node at {addr} failed: {exc}"
            return ("settle", pending, _Outcome(lost=(cause, ClusterError)))
        except BaseException:
            # Interrupted (KeyboardInterrupt...): stop the job, as the node
            # knows it, by this socket's identity.
            head = p.encode(p.MsgType.CANCEL, {"id": job_id, "grace_ms": 0})
            try:
                sock.send(head, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            pending.job.cancel()
            raise

    def _close_links(self) -> None:
        """Close every caller thread's sockets (before `ctx.term()`)."""
        with self._links_lock:
            links = list(self._links)
        for link in links:
            # A thread inside `_exchange` closes its own as it leaves: if it
            # waits on its socket, `ctx.term()` makes the wait fail (ETERM).
            link.close()
