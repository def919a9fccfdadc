"""The client's state, declared in one place, and the constants its roles share.

`ClientState` is the base of every role of the `Client` (payload, results,
bundles, membership, placement, dispatcher, fast path: one module each, one
mixin each, stacked in that order, each seeing the ones before it): it makes
the dictionaries and locks they share, grouped by the role that owns them,
and declares (for the type checker only) the few methods a role calls on a
later one. It holds no behaviour and opens no socket but the wake-up pair.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any

import zmq

from lucidity._options import JobOptions
from lucidity.bundle import Bundle
from lucidity.cluster.security import HandshakeWatch, Keys, client_max_message
from lucidity.cluster.wire import _shm
from lucidity.errors import AuthenticationError, ClusterError

if TYPE_CHECKING:
    from lucidity.cluster.client.fastpath import _ThreadLink
    from lucidity.cluster.client.pending import _Pending
    from lucidity.cluster.wire._loop import EventLoop

__all__ = [
    "IDLE_PING_S",
    "INIT_ATTEMPTS",
    "SILENT_CHECKS",
    "SUBSCRIBE_EVERY_S",
    "ClientState",
]

# A job that finds no live node waits for one to join for this many of its
# `init_retry_interval_ms` (placed the moment one joins), then fails.
INIT_ATTEMPTS = 10
SUBSCRIBE_EVERY_S = 1.0
# While jobs are out on a node it is pinged every check interval of those jobs
# (sync_retry_interval_ms / async_get_retry_interval_ms); a node silent for
# SILENT_CHECKS intervals is lost even if control (maybe down) still lists it.
SILENT_CHECKS = 20
IDLE_PING_S = 1.0


class ClientState:
    """What the client's roles share; see the module docstring."""

    loop: EventLoop
    _ctl: zmq.Socket[Any] | None
    _thread: threading.Thread

    def __init__(
        self,
        control: str | None,
        local_node: str | None = None,
        static_nodes: list[str] | None = None,
        keys: Keys | None = None,
    ) -> None:
        self.control = control
        self.keys = keys
        # Keys for one address instead of `keys` (this process's private node).
        self._addr_keys: dict[str, Keys | None] = {}
        self._watches: dict[str, HandshakeWatch] = {}
        # Addresses whose handshake refused us, and why.
        self._refused: dict[str, AuthenticationError] = {}
        self._max_mb = client_max_message()
        self._local_node = local_node
        self._private_node: Any = None
        self._local_lock = threading.Lock()
        self._pid = os.getpid()
        self._identity = f"c{os.getpid()}-{uuid.uuid4().hex[:12]}".encode()
        self.ctx = zmq.Context()
        self._wake_r = self.ctx.socket(zmq.PAIR)
        self._wake_w = self.ctx.socket(zmq.PAIR)
        wake = f"inproc://lucidity-wake-{id(self)}"
        self._wake_r.bind(wake)
        self._wake_w.connect(wake)
        self._wake_lock = threading.Lock()
        # A wake-up was sent and the I/O thread has not read the queue since:
        # back-to-back submissions (a parent's children) share one.
        self._woken = False
        self._cmds: collections.deque[tuple[Any, ...]] = collections.deque()
        self._cond = threading.Condition()
        self._nodes: list[dict[str, Any]] = []
        self._synced = False
        if static_nodes is not None:
            self._nodes = [{"id": a, "addr": a, "workers": 1} for a in static_nodes]
            self._synced = True
        self._socks: dict[str, zmq.Socket[Any]] = {}
        # What a node's pipe would not take at once: (job id or 0, frames),
        # sent as its socket becomes writable (no send of the I/O thread
        # blocks; a hung node holds up only its own queue).
        self._outq: dict[str, collections.deque[tuple[int, list[Any]]]] = {}
        # A node is known by its identity (the id it announces), not by its
        # address: a node restarted on the same address is a new member.
        self._node_ids: dict[str, str] = {}
        # A node's --max-message-mb, as it announces it, in bytes.
        self._limits: dict[str, int] = {}
        self._min_limit = 2**62
        # Jobs with a timer, by id: the timer itself holds only the id, so a
        # finished job's arguments are not kept until it fires.
        self._timed: dict[int, _Pending] = {}
        self._inflight: dict[int, _Pending] = {}
        self._parked: list[_Pending] = []
        self._park_timer: int | None = None
        self._last_heard: dict[str, float] = {}
        # When each node was last given up (by control or by its silence):
        # a fast-path job sent there before then runs again elsewhere.
        self._lost_at: dict[str, float] = {}
        # The one pending `_ping` timer, and the period it was armed with.
        self._ping_timer: int | None = None
        self._ping_period = IDLE_PING_S
        self._bundles: dict[str, Bundle | None] = {}
        self._by_digest: dict[str, Bundle] = {}
        self._bundle_lock = threading.Lock()
        # Same-host shared memory: this client's argument files, and the node
        # directories seen (path -> usable by this process).
        self._shm_own = _shm.OwnFiles(str(os.getpid()), _shm.node_dir_from_env())
        self._shm_dirs: dict[str, bool] = {}
        self._shm_names: frozenset[str] = frozenset()
        # (node list, whether every node in it shares this host's shared
        # memory): worked out once per change of the list, not per job.
        self._shm_all: tuple[list[dict[str, Any]], bool] = ([], False)
        # SUBMIT headers but for the job id, by what else they hold (most
        # jobs of an app are a few kinds: no header built per job).
        self._heads: dict[tuple[Any, ...], tuple[JobOptions, bytes]] = {}
        self._ids = itertools.count(1)
        # The fast path of blocking calls (`run`): each caller thread's own
        # sockets, and every such thread's, for `close`.
        self._local = threading.local()
        self._links: weakref.WeakSet[_ThreadLink] = weakref.WeakSet()
        self._links_lock = threading.Lock()
        self._link_ids = itertools.count(1)
        self._closed = False

    if TYPE_CHECKING:
        # Called by a role on a later one (the final class has them all).

        def _post(self, cmd: tuple[Any, ...]) -> None: ...

        def _send(self, addr: str, frames: list[Any], job_id: int = 0) -> None: ...

        def _place(self, pending: _Pending) -> None: ...

        def _retry_system(
            self,
            pending: _Pending,
            cause: str,
            error_type: type[ClusterError] = ClusterError,
        ) -> bool:
            raise NotImplementedError

        def _arm_park_timer(self) -> None: ...

        def _arm_ping(self, period: float) -> None: ...

        def _do_cancel(self, job_id: int) -> None: ...

        def _seen_identity(self, addr: str, node: str) -> None: ...

        def _close_links(self) -> None: ...

        def _cancel(self, job: Any) -> None: ...

        def local_node(self) -> str:
            raise NotImplementedError
