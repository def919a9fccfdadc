"""A node's client front: the ROUTER socket that clients send jobs to.

It owns that socket: the CURVE guard's per-message check, decoding, the
validation of every header before anything acts on it (`check_submit`,
`check_cancel`: a malformed message is dropped whole, logged, and never
takes a slot), PING/PONG and the clients' liveness (a client silent for
CLIENT_DEAD_AFTER_S is gone and its jobs are dropped), and sending results
back without blocking (retried while the client reconnects). It may not
queue, start or stop jobs: it hands checked messages to the daemon
(`submit`, `cancel`, `bundle`, `gone`), and it never imports the client:
the two meet only on the wire.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from lucidity.cluster._daemon import bind
from lucidity.cluster.node.scheduler import MAX_DEPTH, Task
from lucidity.cluster.security import Guard
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import NOBLOCK, EventLoop, messages, send_frames
from lucidity.errors import MessageTooLargeError

__all__ = ["ClientFront"]

log = logging.getLogger(__name__)

# A client pings the nodes running its jobs every second; silent this long, it died.
CLIENT_DEAD_AFTER_S = 10.0


class ClientFront:
    """The clients' side of a node.

    `submit(task)` takes a checked job, `cancel(client, job id, grace_s)` a
    checked cancel, `bundle(header, payload)` a BUNDLE, `gone(clients)` the
    clients that stopped pinging; `pump()` runs after each message (a job
    starts before the next message is read).
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        guard: Guard,
        bind_address: str,
        loop: EventLoop,
        node_id: str,
        submit: Callable[[Task], None],
        cancel: Callable[[bytes, int, float], None],
        bundle: Callable[[dict[str, Any], list[zmq.Frame]], None],
        gone: Callable[[set[bytes]], None],
        pump: Callable[[], None],
    ) -> None:
        self.guard = guard
        self.loop = loop
        self.node_id = node_id
        self._submit, self._cancel, self._bundle = submit, cancel, bundle
        self._gone, self._pump = gone, pump
        # The job output dropped for a client and not told yet (set by the
        # node to its NodeOutput's): a RESULT tells it.
        self.untold: Callable[[bytes], int] = lambda client: 0
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        # Tell us when a result's client is not connected, instead of dropping it.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A client that reconnects under its identity takes the old one's place.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        guard.server(self.sock)
        self.endpoint = bind(self.sock, bind_address, "node")
        loop.add_reader(self.sock, self._on_readable)
        self.client_seen: dict[bytes, float] = {}
        self._handlers = {
            p.MsgType.SUBMIT: self._on_submit,
            p.MsgType.CANCEL: self._on_cancel,
            p.MsgType.PING: self._on_ping,
            p.MsgType.BUNDLE: self._on_bundle,
        }

    def send(self, ident: bytes, frames: list[Any]) -> None:
        """Send to one client now; raises zmq.ZMQError if it cannot take it."""
        self.sock.send_multipart([ident, *frames], zmq.NOBLOCK)

    def _on_readable(self) -> None:
        for frames in messages(self.sock, copy=False):
            if len(frames) < 2:
                log.warning("dropped a message of %d frames", len(frames))
                continue
            ident = frames[0].bytes
            if not self.guard.allows(frames[1]):
                self.guard.refuse(self.sock, ident, frames[1])
                continue
            self.client_seen[ident] = time.monotonic()
            try:
                msg = p.decode(frames[1].buffer)
                handler = self._handlers[msg.type]
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
        depth: int = header.get("depth") or 0
        self._submit(Task(ident, header["id"], header, payload, depth))

    def _on_cancel(
        self, ident: bytes, header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        p.check_cancel(header)
        self._cancel(ident, header["id"], (header.get("grace_ms") or 0) / 1000)

    def _on_bundle(
        self, ident: bytes, header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        self._bundle(header, payload)

    def _on_ping(
        self, ident: bytes, header: dict[str, Any], payload: list[zmq.Frame]
    ) -> None:
        try:
            # Its identity: a node restarted on this address is another one.
            pong = p.encode(p.MsgType.PONG, {"node": self.node_id})
            self.sock.send_multipart([ident, pong], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def reap(self) -> None:
        """Every CLIENT_DEAD_AFTER_S / 2: drop the jobs of clients that
        stopped pinging (they died)."""
        self.loop.call_later(CLIENT_DEAD_AFTER_S / 2, self.reap)
        now = time.monotonic()
        dead = {c for c, t in self.client_seen.items() if now - t > CLIENT_DEAD_AFTER_S}
        if not dead:
            return
        for ident in dead:
            del self.client_seen[ident]
        self._gone(dead)

    def reply(self, task: Task, ok: bool, payload: list[Any]) -> None:
        """Send a job's RESULT (or, over the caller's message limit, an
        error saying so) to its client."""
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
        header: dict[str, Any] = {
            "id": task.job_id,
            "ok": ok,
            "node": self.node_id,
            "pid": task.header.get("pid"),
        }
        dropped = self.untold(task.client)
        if dropped:
            header["dropped"] = dropped
        head = p.encode(p.MsgType.RESULT, header)
        self._deliver(task, [task.client, head, *payload])

    def _deliver(self, task: Task, frames: list[Any]) -> None:
        """Send a result; while its client is unreachable (reconnecting), try
        again every async_set_retry_interval_ms until the client is reaped."""
        try:
            send_frames(self.sock, frames, NOBLOCK)
            return
        except zmq.ZMQError as exc:
            if task.client not in self.client_seen:
                log.warning("job %d: its client is gone; result dropped", task.job_id)
                return
            log.info("job %d: client unreachable (%s); will retry", task.job_id, exc)
        interval = (task.header.get("set_ms") or 100) / 1000  # checked: >= 1
        self.loop.call_later(interval, lambda: self._deliver(task, frames))
