"""The control daemon: the membership registry.

Nodes heartbeat to it; clients subscribe and are sent the node list whenever
it changes (and on every subscribe, which is also how a client re-syncs after
a control restart). Subscriptions are leases, dropped when not renewed. No
job data passes through control.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from lucidity.cluster._daemon import announce, bind, install_stop, watch_parent
from lucidity.cluster._liveness import Membership
from lucidity.cluster.security import (
    DEFAULT_MAX_MESSAGE_MB,
    MAX_NODE_WORKERS,
    Guard,
    Keys,
    check_bind,
)
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import EventLoop, messages

__all__ = ["ControlDaemon", "DEFAULT_CONTROL_PORT"]

log = logging.getLogger(__name__)

DEFAULT_CONTROL_PORT = 3030
# A client re-subscribes every second; a lease outlives a few missed renewals.
SUBSCRIPTION_LEASE_S = 5.0


class ControlDaemon:
    def __init__(
        self,
        bind_address: str,
        dead_after: float = 3.0,
        keys: Keys | None = None,
        insecure: bool = False,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
    ) -> None:
        check_bind(bind_address, keys, insecure, "control")
        self.ctx = zmq.Context()
        self.guard = Guard(self.ctx, keys, max_message_mb)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.guard.server(self.sock)
        self.endpoint = bind(self.sock, bind_address, "control")
        self.loop = EventLoop()
        self.members = Membership(dead_after)
        self.started = time.monotonic()
        self.subscribers: dict[bytes, float] = {}
        self._expiry_timer: int | None = None
        self.loop.add_reader(self.sock, self._on_message)
        self._handlers = {
            p.MsgType.HEARTBEAT: self._on_heartbeat,
            p.MsgType.SUBSCRIBE: self._on_subscribe,
        }

    def run(self, parent_fd: int | None = None) -> None:
        install_stop(self.loop)
        if parent_fd is not None:
            watch_parent(self.loop, parent_fd)
        self._prune_subscribers()
        log.info("control listening on %s", self.endpoint)
        announce(self.endpoint)
        try:
            self.loop.run()
        finally:
            self.sock.close(0)
            self.guard.stop()
            self.ctx.term()

    def _on_message(self) -> None:
        for raw in messages(self.sock, copy=False):
            if len(raw) < 2:
                log.warning("dropped a message of %d frames", len(raw))
                continue
            if not self.guard.allows(raw[1]):
                continue
            ident, head = raw[0].bytes, raw[1].bytes
            try:
                msg = p.decode(head)
                handler = self._handlers[msg.type]
            except (p.FrameError, KeyError) as exc:
                log.warning("dropped a bad frame: %s", exc or "unexpected type")
                continue
            try:
                handler(ident, msg.header)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("dropped a malformed %s: %r", msg.type.name, exc)

    def _on_heartbeat(self, ident: bytes, header: dict[str, Any]) -> None:
        node_id = str(header["node"])
        addr = str(header["addr"])
        if not addr.startswith(("tcp://", "ipc://")):
            raise ValueError(f"node address {addr!r} is not a ZeroMQ endpoint")
        workers = int(header["workers"])
        if not 1 <= workers <= MAX_NODE_WORKERS:
            raise ValueError(f"workers {workers} not in 1..{MAX_NODE_WORKERS}")
        info = {
            "addr": addr,
            "workers": workers,
            "procs": int(header.get("procs", 0)),
            "busy": int(header.get("busy", 0)),
            "queued": int(header.get("queued", 0)),
            "pid": int(header.get("pid", 0)),
            # For `lucidity status --watch`.
            "done": int(header.get("done", 0)),
            "mem": int(header.get("mem", 0)),
        }
        # Same-host shared memory (see lucidity.cluster.wire._shm): the node's boot id and
        # directory, passed on to clients, which check both before use.
        max_mb = header.get("max_mb")
        if type(max_mb) is int and max_mb > 0:
            info["max_mb"] = max_mb  # clients check a job's size against it
        host, shm = header.get("host"), header.get("shm")
        if isinstance(host, str) and isinstance(shm, str) and len(host + shm) < 512:
            info["host"], info["shm"] = host, shm
        if header.get("leaving"):
            if self.members.leave(node_id):
                log.info("node %s left", node_id)
                self._broadcast()
            return
        if self.members.beat(node_id, info, time.monotonic()):
            log.info("node %s joined at %s", node_id, info["addr"])
            self._broadcast()
        self._arm_expiry()

    def _on_subscribe(self, ident: bytes, header: dict[str, Any]) -> None:
        if not header.get("once"):
            self.subscribers[ident] = time.monotonic() + SUBSCRIPTION_LEASE_S
        self._send_nodes(ident)

    def _nodes_frame(self) -> bytes:
        # Until a full heartbeat-expiry window has passed since start, a node
        # missing from the list may just not have re-registered yet.
        settled = time.monotonic() - self.started > self.members.dead_after
        return p.encode(
            p.MsgType.NODES, {"nodes": self.members.members(), "settled": settled}
        )

    def _send_nodes(self, ident: bytes, frame: bytes | None = None) -> None:
        try:
            self.sock.send_multipart([ident, frame or self._nodes_frame()], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("could not send nodes to a subscriber: %s", exc)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        live = {i: t for i, t in self.subscribers.items() if t > now}
        if len(live) < len(self.subscribers):
            log.info(
                "dropped %d expired subscriptions (%d left)",
                len(self.subscribers) - len(live),
                len(live),
            )
        self.subscribers = live

    def _prune_subscribers(self) -> None:
        """Drop expired subscriptions every half lease, whatever the nodes do:
        clients come and go while membership may not change for days."""
        self._drop_expired()
        self.loop.call_later(SUBSCRIPTION_LEASE_S / 2, self._prune_subscribers)

    def _broadcast(self) -> None:
        self._drop_expired()
        frame = self._nodes_frame()
        for ident in self.subscribers:
            self._send_nodes(ident, frame)

    def _arm_expiry(self) -> None:
        if self._expiry_timer is not None:
            self.loop.cancel(self._expiry_timer)
            self._expiry_timer = None
        nxt = self.members.next_expiry()
        if nxt is not None:
            delay = max(0.0, nxt - time.monotonic()) + 0.01
            self._expiry_timer = self.loop.call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry_timer = None
        gone = self.members.expire(time.monotonic())
        for node_id in gone:
            log.warning("node %s stopped heartbeating: dropped", node_id)
        if gone:
            self._broadcast()
        self._arm_expiry()
