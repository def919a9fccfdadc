"""Membership: which nodes this client knows, by identity, and who refused it.

`_Membership` follows control's node list (SUBSCRIBE, NODES pushed on
change), each node's identity (a node restarted on an address is a new
member) and message limit, the handshake watches and their refusals, and
gives nodes up (left, or silent). It may re-place the jobs of a node that is
gone (through placement) but never sends a job itself.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import zmq

from lucidity.cluster.client.pending import _fail, _restarted
from lucidity.cluster.client.results import _Results
from lucidity.cluster.client.state import (
    INIT_ATTEMPTS,
    SILENT_CHECKS,
    SUBSCRIBE_EVERY_S,
)
from lucidity.cluster.security import (
    MAX_NODE_WORKERS,
    HandshakeWatch,
    secure_client,
    set_max_message,
)
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import (
    messages,
)
from lucidity.errors import (
    AuthenticationError,
    ClusterError,
    NoNodesError,
)

__all__ = ["_Membership", "_worker_slots"]

log = logging.getLogger("lucidity.cluster.client")

_MiB = 1024 * 1024


def _worker_slots(node: dict[str, Any]) -> int:
    # A heartbeat's claim, bounded: a peer cannot size every fanout's window.
    try:
        return min(max(1, int(node.get("workers", 1))), MAX_NODE_WORKERS)
    except (TypeError, ValueError):
        return 1


class _Membership(_Results):
    """The cluster's members as this client sees them."""

    def _secure(self, sock: zmq.Socket[Any], addr: str, watched: bool = True) -> None:
        """Keys and size limit for `sock`, and (I/O thread) a watch on its
        handshakes."""
        keys = self._addr_keys[addr] if addr in self._addr_keys else self.keys
        if keys is not None:
            secure_client(sock, keys)
        set_max_message(sock, self._max_mb)
        if not watched:
            return
        watch = HandshakeWatch(
            sock,
            addr,
            keys,
            functools.partial(self._on_refused, addr),
            functools.partial(self._refused.pop, addr, None),
        )
        self._watches[addr] = watch
        self.loop.add_reader(watch.monitor, watch.on_event)

    def _on_refused(self, addr: str, error: AuthenticationError) -> None:
        """`addr` refused our handshake: fail what waits on it, at once."""
        self._refused[addr] = error
        for job_id, pending in list(self._inflight.items()):
            if pending.addr == addr:
                del self._inflight[job_id]
                if not pending.job.done():
                    _fail(pending.job, error)
        if addr == self.control:
            parked, self._parked = self._parked, []
            for pending in parked:
                if not pending.job.done():
                    _fail(pending.job, error)
            with self._cond:
                self._cond.notify_all()

    def _control_refused(self) -> AuthenticationError | None:
        return self._refused.get(self.control) if self.control else None

    def local_node(self) -> str:
        """This process's own node: its worker's node, the embedded one, or a
        private node started on first use."""
        node = self._local_node
        if node is not None:
            return node
        # Two threads' first `_local` calls must not each start a node.
        with self._local_lock:
            if self._local_node is None:
                from lucidity.cluster.embedded import start_private_node

                self._private_node = start_private_node()
                node = self._private_node.nodes[0]
                # Private by its ipc folder, not by keys: never offer it the
                # cluster's keys (a CURVE handshake with a plain socket fails).
                self._addr_keys[node] = None
                self._local_node = node
            return self._local_node

    def nodes(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """The live nodes; waits up to `timeout` for at least one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._nodes and self._control_refused() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self._nodes)

    def wait_for_nodes(self, count: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._nodes) < count:
                refused = self._control_refused()
                if refused is not None:
                    raise refused
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClusterError(
                        f"only {len(self._nodes)} of {count} nodes joined the "
                        f"cluster at {self.control} within {timeout:.0f} s"
                    )
                self._cond.wait(left)
            return list(self._nodes)

    def _no_nodes_error(
        self, init_ms: int, option: str = "init_retry_interval_ms"
    ) -> ClusterError:
        refused = self._control_refused()
        if refused is not None:
            return refused
        waited = INIT_ATTEMPTS * init_ms
        if self.control is not None and not self._synced:
            return NoNodesError(
                f"control at {self.control} did not answer within {waited} ms "
                f"({INIT_ATTEMPTS} x {option}); is `lucidity control` "
                "running there? (if the cluster requires keys, set LUCIDITY_KEYS=DIR "
                "or lucidity.connect(address, keys=DIR))"
            )
        return NoNodesError(
            f"no live node in the cluster at {self.control} after waiting "
            f"{waited} ms ({INIT_ATTEMPTS} x {option}); "
            "start one with `lucidity node --control ...`"
        )

    def _seen_identity(self, addr: str, node: str) -> None:
        """A PONG from `addr` says it is `node` (from either thread)."""
        if threading.current_thread() is self._thread:
            self._new_identity(addr, node)
            return
        # The caller's fast path sees the change at its next check.
        self._node_ids[addr] = node
        try:
            self._post(("identity", addr, node))
        except ClusterError:
            pass  # closing

    def _new_identity(self, addr: str, node: str) -> None:
        """The node at `addr` is `node` now: jobs sent to the process that
        was there before never reach this one; they run again (I/O thread)."""
        self._node_ids[addr] = node
        for pending in [
            x
            for x in self._inflight.values()
            if x.addr == addr and x.node is not None and x.node != node
        ]:
            self._retry_system(pending, _restarted(addr, pending.node, node))

    def _give_up(self, silent: dict[str, float]) -> None:
        """Drop nodes silent for SILENT_CHECKS check intervals (address ->
        seconds), as if control had: control may be down, or not know yet."""
        for addr, seconds in silent.items():
            log.warning(
                "node at %s silent for %.1f s (%d checks)",
                addr,
                seconds,
                SILENT_CHECKS,
            )
        with self._cond:
            self._nodes = [n for n in self._nodes if n["addr"] not in silent]
        self._on_nodes_lost(set(silent))

    def _on_nodes_lost(self, lost: set[str]) -> None:
        now = time.monotonic()
        for addr in lost:
            log.warning("node at %s left the cluster", addr)
            self._lost_at[addr] = now
            self._last_heard.pop(addr, None)
            self._outq.pop(addr, None)
            self._node_ids.pop(addr, None)
            self._limits.pop(addr, None)
            # Its monitor too (before its socket: the monitor is turned off
            # on it): else an fd and a poller entry per node that ever left.
            watch = self._watches.pop(addr, None)
            if watch is not None:
                self.loop.remove_reader(watch.monitor)
                watch.close()
            sock = self._socks.pop(addr, None)
            if sock is not None:
                self.loop.remove_reader(sock)
                sock.close(0)
        for pending in [x for x in self._inflight.values() if x.addr in lost]:
            self._retry_system(pending, f"node at {pending.addr} was lost")

    def _learn(self, nodes: list[dict[str, Any]]) -> None:
        """Identities and message limits from control's node list."""
        ids: dict[str, set[str]] = {}
        for n in nodes:
            ids.setdefault(n["addr"], set()).add(str(n["id"]))
            mb = n.get("max_mb")
            if type(mb) is int and mb > 0:
                self._limits[n["addr"]] = mb * _MiB
        self._min_limit = min(self._limits.values(), default=2**62)
        for addr, known in ids.items():
            node = self._node_ids.get(addr)
            if node is None:
                self._node_ids[addr] = min(known)
            elif node not in known:
                # Control lists the new process only (or both, the old one
                # until it expires; then its PONGs have told us already).
                self._new_identity(addr, min(known))

    def _subscribe(self) -> None:
        assert self._ctl is not None
        try:
            self._ctl.send(p.encode(p.MsgType.SUBSCRIBE), zmq.NOBLOCK)
        except zmq.Again:
            pass
        self.loop.call_later(SUBSCRIBE_EVERY_S, self._subscribe)

    def _on_control(self) -> None:
        assert self._ctl is not None
        for frames in messages(self._ctl):
            try:
                msg = p.decode(frames[0])
                if msg.type != p.MsgType.NODES:
                    raise p.FrameError(f"unexpected {msg.type.name}")
                nodes = [dict(n) for n in msg.header["nodes"]]
                for n in nodes:
                    if not str(n["addr"]).startswith(("tcp://", "ipc://")):
                        raise ValueError(f"bad node address {n['addr']!r}")
            except (p.FrameError, KeyError, TypeError, ValueError) as exc:
                log.warning("dropped a bad frame from control: %s", exc)
                continue
            before = {n["addr"] for n in self._nodes}
            if not msg.header.get("settled", True):
                # A control that just (re)started has not heard every node yet:
                # absence from its list means nothing until it has settled.
                known = {n["addr"] for n in nodes}
                nodes += [n for n in self._nodes if n["addr"] not in known]
            with self._cond:
                self._nodes = nodes
                self._synced = True
                self._cond.notify_all()
            lost = before - {n["addr"] for n in nodes}
            if lost:
                self._on_nodes_lost(lost)
            self._learn(nodes)
            if nodes and self._parked:
                parked, self._parked = self._parked, []
                for pending in parked:
                    self._place(pending)
                self._arm_park_timer()
