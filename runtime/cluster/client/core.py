"""The client: how a process (an app, or a job inside a worker) reaches the cluster.

One I/O thread per process owns the shared sockets: a DEALER to control (the
node list, pushed on change) and a DEALER per node (jobs out, results in).
Caller threads hand it commands through a deque and an inproc wake-up
socket, and wait on the `Job` futures it completes. A blocking call (`run`)
first goes a shorter way: its thread sends the job and waits for the result
on a DEALER of its own, and hands the job to the I/O thread only when it
needs more than that (a lost run, a silent node, a timeout...). The engine
seam is small: `submit` one job (or `run` it), `fanout` many, and `nodes()`.
"""

from __future__ import annotations

import atexit
import collections
import functools
import itertools
import logging
import os
import pickle
import random
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from typing import Any

import zmq

from lucidity._options import JobOptions
from lucidity.bundle import Bundle, build_bundle
from lucidity.cluster.node.output import forwarding
from lucidity.cluster.security import (
    MAX_NODE_WORKERS,
    HandshakeWatch,
    Keys,
    client_max_message,
    keys_from_env,
    load_keys,
    secure_client,
    set_max_message,
)
from lucidity.cluster.wire import _shm
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import (
    NOBLOCK,
    EventLoop,
    messages,
    recv_frames,
    send_frames,
)
from lucidity.errors import (
    AuthenticationError,
    ClusterError,
    JobTimeoutError,
    LucidityError,
    MessageTooLargeError,
    NoNodesError,
    RemoteError,
    RemoteTraceback,
    WorkerLostError,
)
from lucidity.handle import Job, blocking, child_depth
from lucidity.printer import show_output

__all__ = ["Client", "connect", "get_client", "shutdown"]

log = logging.getLogger(__name__)

# A job that finds no live node waits for one to join for this many of its
# `init_retry_interval_ms` (placed the moment one joins), then fails.
INIT_ATTEMPTS = 10
SUBSCRIBE_EVERY_S = 1.0
# Runs of one job after its node or worker was lost, before it fails.
MAX_SYSTEM_ATTEMPTS = 3
# While jobs are out on a node it is pinged every check interval of those jobs
# (sync_retry_interval_ms / async_get_retry_interval_ms); a node silent for
# SILENT_CHECKS intervals is lost even if control (maybe down) still lists it.
SILENT_CHECKS = 20
IDLE_PING_S = 1.0

_PING = p.encode(p.MsgType.PING)
_MiB = 1024 * 1024
_random = random.random


def _random_addr(nodes: list[dict[str, Any]]) -> str:
    """The address of a node picked at random: random.choice without its two
    Python-level calls (the fast path picks one per call)."""
    return str(nodes[int(_random() * len(nodes))]["addr"])


def encode_callable(fn: Callable[..., Any], args: Any) -> tuple[str, Any]:
    """A callable target (Executor, joblib) and its arguments as the wire
    takes them: a module-level function or class by reference, as a job is
    ("pkg.mod:name", shipped by its package); anything else (a bound method,
    a partial, an instance) pickled ahead of its arguments, named
    "<pickled>:MODULE:NAME" for logs and for the package to ship."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    if isinstance(module, str) and isinstance(name, str) and module != "__main__":
        obj: Any = sys.modules.get(module)
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is fn:
            return f"{module}:{name}", args
    inner = fn.func if isinstance(fn, functools.partial) else fn
    module = getattr(inner, "__module__", None) or "builtins"
    name = getattr(inner, "__qualname__", type(inner).__qualname__)
    if module.partition(".")[0] == "lucidity":
        module = "builtins"  # lucidity is installed where workers run
    return f"{p.PICKLED_TARGET}:{module}:{name}", (fn, args)


def _decode_error(frames: list[Any], node: str) -> BaseException:
    try:
        blob, ename, evalue, tb = pickle.loads(frames[0])
    except Exception as exc:  # a result we cannot read is the job's failure
        return ClusterError(f"unreadable error from node {node}: {exc!r}")
    exc_obj: BaseException | None = None
    if blob is not None:
        try:
            exc_obj = pickle.loads(blob)
        except Exception:
            exc_obj = None
    if not isinstance(exc_obj, Exception):
        # Unreadable, or not an Exception: a job's SystemExit or
        # KeyboardInterrupt must not end (or interrupt) its caller.
        return RemoteError(ename, evalue, tb, node)
    if tb:
        exc_obj.__cause__ = RemoteTraceback(f"{tb.rstrip()}\n(on node {node})")
    return exc_obj


def _worker_slots(node: dict[str, Any]) -> int:
    # A heartbeat's claim, bounded: a peer cannot size every fanout's window.
    try:
        return min(max(1, int(node.get("workers", 1))), MAX_NODE_WORKERS)
    except (TypeError, ValueError):
        return 1


def _largest(frames: list[Any]) -> int:
    if len(frames) == 2:
        return len(frames[1])  # a header and a pickle: most jobs
    return max((memoryview(f).nbytes for f in frames[1:]), default=0)


def _restarted(addr: str, old: str | None, new: str | None) -> str:
    return f"node at {addr} restarted (was {old}, now {new})"


def _fail(job: Future[Any], exc: BaseException) -> None:
    """Fail `job` unless it is done already: a caller's `cancel()` can land
    between any check of `done()` and this (and must not stop the I/O
    thread's loop over other jobs)."""
    try:
        job.set_exception(exc)
    except InvalidStateError:
        pass


class _Pending:
    """A job this client has submitted and not yet seen finish."""

    __slots__ = (
        "_job",
        "job_id",
        "target",
        "client",
        "files",
        "frames",
        "options",
        "local",
        "pinned",
        "addr",
        "deadline",
        "system_attempts",
        "app_attempts",
        "timer",
        "init_ms",
        "check_ms",
        "size",
        "node",
    )

    def __init__(
        self,
        client: Client,
        job_id: int,
        target: str,
        frames: list[Any],
        options: JobOptions,
        local: bool,
        addr: str | None,
        blocking: bool = False,
        files: list[str] | None = None,
    ) -> None:
        # The handle is made when first asked for: a blocking call that ends
        # on the fast path never needs one (`Client.run`).
        self._job: Job[Any] | None = None
        self.job_id = job_id
        self.target = target
        self.client = client
        # Argument files in shared memory, released when the job is done.
        self.files = files
        # The seed's retry intervals, per variant: how long to wait for a node
        # to place the job on, and how often to check the node running it.
        if blocking:
            self.init_ms = options.init_retry_interval_ms
            self.check_ms = options.sync_retry_interval_ms
        else:
            self.init_ms = options.async_init_retry_interval_ms
            self.check_ms = options.async_get_retry_interval_ms
        self.frames = frames
        self.options = options
        self.local = local
        # A local job must run on its own node; a fanout item may move on.
        self.pinned = local
        self.addr = addr
        self.deadline = 0.0
        self.system_attempts = 0
        self.app_attempts = 0
        self.timer: int | None = None
        # Its largest frame: a node drops a connection that sends it more
        # than its --max-message-mb (announced), so it is checked first.
        self.size = _largest(frames)
        # The identity of the node it was last sent to, as then known.
        self.node: str | None = None

    @property
    def same_host(self) -> bool:
        """Its payload holds shared-memory descriptors: only this host's nodes."""
        return bool(self.files)

    @property
    def job(self) -> Job[Any]:
        """The job's handle; made by the caller's thread (by `submit`, or by
        `run` before it hands the job to the I/O thread)."""
        job = self._job
        if job is None:
            job = self._job = Job(self.job_id, self.target)
            job._cancel_hook = self.client._cancel
            files = self.files
            if files:
                own = self.client._shm_own
                job.add_done_callback(lambda _: own.release(files))
        return job


class _Outcome:
    """What one run of a job came to: a value, an error, or a lost run.

    Read from a RESULT by `Client._outcome`, in whichever thread received it;
    acted on by `Client._settle` (I/O thread), or at once by the caller
    thread's fast path when it ends the job.
    """

    __slots__ = ("value", "error", "lost")

    def __init__(
        self,
        value: Any = None,
        error: BaseException | None = None,
        lost: tuple[str, type[ClusterError]] | None = None,
    ) -> None:
        self.value = value
        self.error = error
        # (cause, error type): the run was lost (its worker died, its result
        # cannot be read), not the job's own doing; it may run again.
        self.lost = lost

    def final(self, pending: _Pending) -> bool:
        """Whether this ends the job: not a lost run, and not an application
        error with `retries` left."""
        if self.lost is not None:
            return False
        error = self.error
        return (
            error is None
            or pending.app_attempts >= pending.options.retries
            or isinstance(error, LucidityError)
        )

    def complete(self, job: Job[Any]) -> None:
        try:
            if self.error is not None:
                job.set_exception(self.error)
            else:
                job.set_result(self.value)
        except InvalidStateError:
            pass  # cancelled meanwhile


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


class Client:
    """The cluster as one process sees it; all sockets live on one I/O thread,
    but for each caller thread's own sockets of the fast path (`run`)."""

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
        self.loop = EventLoop()
        self.loop.add_reader(self._wake_r, self._on_wake)
        self._ctl: zmq.Socket[Any] | None = None
        if control is not None:
            self._ctl = self.ctx.socket(zmq.DEALER)
            self._ctl.linger = 0
            self._secure(self._ctl, control)
            self._ctl.connect(control)
            self.loop.add_reader(self._ctl, self._on_control)
        self._thread = threading.Thread(
            target=self._run, name="lucidity-client", daemon=True
        )
        self._thread.start()

    # ---- security --------------------------------------------------------

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

    # ---- caller side -----------------------------------------------------

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

    def _new_job(
        self,
        target: str,
        options: JobOptions,
        args: Any,
        batch: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[int, list[Any], list[str] | None]:
        """The job's id, its SUBMIT frames, and the shared-memory files of its
        arguments (then only a node on this host can run it).

        Keyword arguments travel with the positional ones, `(args, kwargs)`,
        under a "kw" header; without any the payload is `args` alone, as
        positional calls (the hot path) always had it."""
        job_id = next(self._ids)
        kw = bool(kwargs)
        payload, shared, files = self._dumps_args((args, kwargs) if kw else args)
        depth = child_depth()
        # By the options' identity (hashing a dataclass costs a tuple of its
        # fields each time); the entry holds them, so the id stays theirs.
        key = (target, id(options), batch, depth, shared, kw)
        entry = self._heads.get(key)
        if entry is None:
            if len(self._heads) >= 1024:
                self._heads.clear()  # a bound, for apps of many job kinds
            head = self._submit_head(target, options, batch, depth, shared, kw)
            entry = self._heads[key] = (options, head)
        return job_id, [p.with_id(entry[1], job_id), *payload], files

    def _submit_head(
        self,
        target: str,
        options: JobOptions,
        batch: str | None,
        depth: int | None,
        shared: bool,
        kw: bool = False,
    ) -> bytes:
        """The SUBMIT header of a kind of job, but for its id."""
        header: dict[str, Any] = {"target": target}
        if batch is not None:
            # `args` is a list of items; see worker._run_batch.
            header["batch"] = batch
        if depth is not None:
            header["depth"] = depth
        if options.async_set_retry_interval_ms != 100:
            header["set_ms"] = options.async_set_retry_interval_ms
        bundle = self._bundle(target)
        if bundle is not None:
            header["bundle"] = bundle.digest
        if options.memory is not None:
            header["memory"] = options.memory
        if options.fuel is not None:
            header["fuel"] = options.fuel
        if shared:
            header["shm"] = 1  # answer through shared memory too
        # A result over it would make our socket drop the node's connection:
        # the node answers with an error instead.
        header["max_mb"] = self._max_mb
        if not forwarding():
            header["quiet"] = 1  # its output stays in its node's log
        if kw:
            header["kw"] = 1  # the payload is (args, kwargs)
        return p.encode(p.MsgType.SUBMIT, header)

    # ---- same-host shared memory (lucidity.cluster.wire._shm) ----

    def _dumps_args(self, args: Any) -> tuple[list[Any], bool, list[str] | None]:
        """The payload of a job's arguments, whether every node shares this
        host, and the shared-memory files the payload names (if any).

        When every node shares this host, large buffers go through shared
        memory and the worker is asked to answer the same way. Nodes are
        chosen later (and a retry may pick another), so it is all or none.
        The files are this client's until the job is over, however it ends:
        a retry re-sends the same descriptors.
        """
        nodes = self._nodes
        known, shared = self._shm_all
        if known is not nodes:
            shared = bool(nodes) and all(self._shm_node_dir(n) for n in nodes)
            self._shm_all = (nodes, shared)
        if not shared:
            return p.dumps_payload(args), False, None
        out = _shm.Outbound(self._shm_own.directory, "a")
        frames = p.dumps_payload(args, out)
        if out.written:
            self._shm_own.adopt(out.written)  # released by the job's handle
        return frames, True, out.written or None

    def _shm_node_dir(self, node: dict[str, Any]) -> str | None:
        """`node`'s shared-memory directory, if it is on this host (same boot
        id) and this process can use the directory; else None."""
        path, host = node.get("shm"), node.get("host")
        if path is None and node.get("addr") == os.environ.get("LUCIDITY_NODE"):
            # A worker of a standalone node knows its node from its environment.
            path, host = _shm.node_dir_from_env(), _shm.boot_id()
        if not isinstance(path, str) or host is None or host != _shm.boot_id():
            return None
        usable = self._shm_dirs.get(path)
        if usable is None:
            usable = self._shm_dirs[path] = _shm.usable_dir(path)
            if usable:
                self._shm_names = self._shm_names | {os.path.basename(path)}
        return path if usable else None

    def _shm_inbound(self) -> _shm.Inbound:
        """How a result's descriptors are taken: from a node's directory (the
        file is unlinked once mapped) or, for an echoed argument, our own;
        mapped private and writable."""
        names = self._shm_names
        own = self._shm_own.name()
        if own is not None:
            names = names | {own}
        return _shm.Inbound(names, writable=True, unlink=True, keep=self._shm_own.live)

    def submit(
        self,
        target: str,
        options: JobOptions,
        args: Any,
        kwargs: Mapping[str, Any] | None = None,
        local: bool = False,
        addr: str | None = None,
        blocking: bool = False,
        batch: str | None = None,
    ) -> Job[Any]:
        """Start `target(*args, **kwargs)`; on this process's node when `local`.

        `blocking` says the caller waits at once (`_local`/`_remote`/fanout),
        which picks the sync rather than the async retry intervals. With
        `batch` ("tuples" or "single") `args` is a fanout chunk: a list of
        argument tuples, or of lone arguments, and `kwargs` apply to each.
        """
        pending = self._pending(
            target, options, args, local, addr, blocking, batch, kwargs
        )
        self._post(("submit", pending))
        return pending.job

    def _pending(
        self,
        target: str,
        options: JobOptions,
        args: Any,
        local: bool,
        addr: str | None,
        blocking: bool,
        batch: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> _Pending:
        """A new job's record, its frames built (`submit` and `run`)."""
        job_id, frames, files = self._new_job(target, options, args, batch, kwargs)
        if local:
            addr = self.local_node()
        return _Pending(
            self, job_id, target, frames, options, local, addr, blocking, files
        )

    # ---- the fast path of blocking calls ------------------------------------

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

    def _bundle(self, target: str) -> Bundle | None:
        module = target.partition(":")[0]
        if module == p.PICKLED_TARGET:
            module = target.split(":")[1]
        top = module.partition(".")[0]
        try:
            return self._bundles[top]
        except KeyError:
            pass
        with self._bundle_lock:
            if top not in self._bundles:
                bundle = build_bundle(module)
                if bundle is not None:
                    self._by_digest[bundle.digest] = bundle
                self._bundles[top] = bundle
            return self._bundles[top]

    def _cancel(self, job: Job[Any]) -> None:
        if not self._closed:
            self._post(("cancel", job.job_id))

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

    def close(self) -> None:
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
            stop = os.getpid() == self._pid and self._thread.is_alive()
            if stop:
                self._cmds.append(("stop",))
                try:
                    self._wake_w.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    # The I/O thread is already on its way out (its sockets
                    # are closed): nothing to stop or wait for.
                    log.warning("lucidity client: I/O thread already ending (%s)", exc)
                    stop = False
        if stop:
            self._thread.join(timeout=5)
        if os.getpid() == self._pid:
            self._shm_own.close()
        if self._private_node is not None:
            self._private_node.stop()

    # ---- I/O thread ------------------------------------------------------

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

    def _place(self, pending: _Pending) -> None:
        if pending.job.done():
            return  # cancelled before it left
        addr = pending.addr
        if addr is None:
            if not self._nodes:
                self._park(pending)
                return
            nodes = self._nodes
            if pending.same_host:
                nodes = [n for n in nodes if self._shm_node_dir(n) is not None]
                if not nodes:
                    self._finish(pending)
                    _fail(
                        pending.job,
                        ClusterError(
                            f"job {pending.job.target} #{pending.job.job_id} cannot "
                            "be placed: its arguments are in this host's shared "
                            "memory, and no node on this host is left"
                        ),
                    )
                    return
            addr = self._fitting_addr(pending, nodes)
            if addr is None:
                return
        elif pending.size > self._limits.get(addr, pending.size):
            if pending.pinned or not self._fitting(pending, self._nodes):
                self._too_large(pending, addr)
                return
            pending.addr = None
            self._place(pending)  # a fanout item: another node takes it
            return
        pending.addr = addr
        refused = self._refused.get(addr)
        if refused is not None:
            _fail(pending.job, refused)
            return
        self._inflight[pending.job.job_id] = pending
        self._last_heard.setdefault(addr, time.monotonic())
        if pending.check_ms < self._ping_period * 1000:
            # Check this node at the job's pace from now on: the next tick of
            # a slower period could come after the job's silence window ends
            # and give a healthy node up.
            self._arm_ping(pending.check_ms / 1000)
        if pending.timer is None and pending.options.timeout is not None:
            job_id = pending.job_id
            self._timed[job_id] = pending
            pending.timer = self.loop.call_later(
                pending.options.timeout, functools.partial(self._on_timeout, job_id)
            )
            pending.job.add_done_callback(lambda _: self._timed.pop(job_id, None))
        pending.node = self._node_ids.get(addr)
        try:
            self._send(addr, pending.frames, pending.job_id)
        except zmq.ZMQError as exc:
            self._inflight.pop(pending.job.job_id, None)
            self._finish(pending)
            _fail(
                pending.job, ClusterError(f"cannot send job to node at {addr}: {exc}")
            )

    def _fitting(self, pending: _Pending, nodes: list[dict[str, Any]]) -> list[str]:
        """The addresses of `nodes` whose message limit takes `pending`."""
        limits, size = self._limits, pending.size
        return [n["addr"] for n in nodes if size <= limits.get(n["addr"], size)]

    def _fitting_addr(
        self, pending: _Pending, nodes: list[dict[str, Any]]
    ) -> str | None:
        """A node at random for `pending`, among those whose limit takes it;
        None when none does (the job failed, naming the limit)."""
        if pending.size <= self._min_limit:
            return _random_addr(nodes)  # most jobs: every node takes them
        fit = self._fitting(pending, nodes)
        if not fit:
            best = max(nodes, key=lambda n: self._limits.get(n["addr"], 0))
            self._too_large(pending, best["addr"])
            return None
        return fit[int(_random() * len(fit))]

    def _too_large(self, pending: _Pending, addr: str) -> None:
        self._finish(pending)
        limit = self._limits[addr]
        _fail(
            pending.job,
            MessageTooLargeError(
                f"job {pending.target} #{pending.job_id}: its arguments are a "
                f"message of {pending.size:,} bytes, over the limit of the node "
                f"at {addr}: {limit // _MiB} MiB (its --max-message-mb); "
                "pass large data through shared memory (a numpy array or "
                "pickle.PickleBuffer, on the node's host) or raise the limit"
            ),
        )

    def _on_timeout(self, job_id: int) -> None:
        pending = self._timed.pop(job_id, None)
        if pending is None:
            return  # finished meanwhile
        pending.timer = None
        job = pending.job
        if job.done():
            return
        self._do_cancel(job.job_id)
        _fail(
            job,
            JobTimeoutError(
                f"job {job.target} #{job.job_id} ran past its timeout of "
                f"{pending.options.timeout} s (on {pending.addr}); its worker was stopped"
            ),
        )

    def _finish(self, pending: _Pending) -> None:
        if pending.timer is not None:
            self.loop.cancel(pending.timer)
            pending.timer = None
            self._timed.pop(pending.job_id, None)

    def _retry_system(
        self,
        pending: _Pending,
        cause: str,
        error_type: type[ClusterError] = ClusterError,
    ) -> bool:
        """Run a job again elsewhere after a node or worker was lost.

        Bounded: after MAX_SYSTEM_ATTEMPTS the job fails with the cause.
        """
        pending.system_attempts += 1
        job = pending.job
        # Out of `_inflight` either way: a failed job must not stay there
        # (pinged for, and retried again on the next node loss).
        self._inflight.pop(job.job_id, None)
        # A local job runs on its own node only: again after its worker
        # died, but not once the node itself is gone.
        gone = pending.pinned and error_type is not WorkerLostError
        if gone or pending.system_attempts >= MAX_SYSTEM_ATTEMPTS:
            self._finish(pending)
            if not job.done():
                _fail(
                    job,
                    error_type(
                        f"job {job.target} #{job.job_id} failed: {cause} "
                        f"(attempt {pending.system_attempts} of {MAX_SYSTEM_ATTEMPTS})"
                    ),
                )
            return False
        log.warning("job %s #%d: %s; running it again", job.target, job.job_id, cause)
        if not pending.pinned:
            pending.addr = None
        self._place(pending)
        return True

    def _park(self, pending: _Pending) -> None:
        refused = self._control_refused()
        if refused is not None:
            _fail(pending.job, refused)
            return
        wait_s = INIT_ATTEMPTS * pending.init_ms / 1000
        pending.deadline = time.monotonic() + wait_s
        self._parked.append(pending)
        self._arm_park_timer()

    def _arm_park_timer(self) -> None:
        if self._park_timer is not None:
            self.loop.cancel(self._park_timer)
            self._park_timer = None
        if self._parked:
            first = min(x.deadline for x in self._parked)
            delay = max(0.0, first - time.monotonic())
            self._park_timer = self.loop.call_later(delay, self._on_park_timer)

    def _on_park_timer(self) -> None:
        self._park_timer = None
        now = time.monotonic()
        keep = []
        for pending in self._parked:
            if pending.deadline <= now:
                if not pending.job.done():
                    option = (
                        "init_retry_interval_ms"
                        if pending.init_ms == pending.options.init_retry_interval_ms
                        else "async_init_retry_interval_ms"
                    )
                    _fail(pending.job, self._no_nodes_error(pending.init_ms, option))
            else:
                keep.append(pending)
        self._parked = keep
        self._arm_park_timer()

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

    def _node_message(
        self, sock: zmq.Socket[Any], frames: list[Any], addr: str
    ) -> tuple[int, dict[str, Any]] | None:
        """The job id and header of a RESULT from a node; PONG, FETCH
        (answered here) and bad frames (logged) are None. Called by the
        thread that owns `sock`."""
        try:
            msg = p.decode(frames[0].buffer)
            if msg.type == p.MsgType.RESULT:
                return int(msg.header["id"]), msg.header
            if msg.type == p.MsgType.PONG:
                node = msg.header.get("node")
                if isinstance(node, str) and self._node_ids.get(addr) != node:
                    self._seen_identity(addr, node)
                return None
            if msg.type == p.MsgType.OUTPUT:
                show_output(msg.header, frames[1:])
                return None
            if msg.type == p.MsgType.FETCH:
                self._send_bundle(sock, addr, str(msg.header["bundle"]))
                return None
            raise p.FrameError(f"unexpected {msg.type.name}")
        except (p.FrameError, KeyError, TypeError, ValueError) as exc:
            log.warning("dropped a bad frame from node %s: %s", addr, exc)
            return None

    def _outcome(
        self, header: dict[str, Any], payload: list[Any], addr: str
    ) -> _Outcome:
        """What a RESULT says of its job, read by whichever thread got it."""
        unreadable: Exception | None = None
        if header.get("ok"):
            try:
                return _Outcome(value=p.loads_payload(payload, self._shm_inbound))
            except Exception as exc:
                unreadable = exc
        node = str(header.get("node", addr))
        if isinstance(unreadable, _shm.ShmError):
            # The result's file is gone (its node stopped meanwhile) or is
            # not what it claims: as good as a lost worker.
            cause = f"its result from {node} cannot be read: {unreadable}"
            return _Outcome(lost=(cause, ClusterError))
        if unreadable is not None:
            return _Outcome(
                error=ClusterError(
                    f"cannot unpickle the result from {node}: {unreadable!r}"
                )
            )
        error = _decode_error(payload, node)
        if isinstance(error, WorkerLostError):
            return _Outcome(lost=(str(error), WorkerLostError))
        return _Outcome(error=error)

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

    def _send_bundle(self, sock: zmq.Socket[Any], addr: str, digest: str) -> None:
        bundle = self._by_digest.get(digest)
        frames: list[Any]
        if bundle is None:
            # Say so, or the node's jobs would wait for it until they expire.
            log.warning("a node asked for bundle %s, which is not ours", digest[:12])
            frames = [p.encode(p.MsgType.BUNDLE, {"bundle": digest, "missing": True})]
        else:
            frames = [p.encode(p.MsgType.BUNDLE, {"bundle": digest}), bundle.data]
        if threading.current_thread() is self._thread:
            self._send(addr, frames)
        else:
            send_frames(sock, frames)  # a caller's own socket, as it waits

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

    def _on_silent(self, pending: _Pending, addr: str, seconds: float) -> None:
        """The fast path heard nothing from `addr` for SILENT_CHECKS
        intervals while `pending` ran there: as if the I/O thread had."""
        if any(n["addr"] == addr for n in self._nodes):
            self._give_up({addr: seconds})
        self._retry_system(pending, f"node at {addr} was lost")

    def _close_links(self) -> None:
        """Close every caller thread's sockets (before `ctx.term()`)."""
        with self._links_lock:
            links = list(self._links)
        for link in links:
            # A thread inside `_exchange` closes its own as it leaves: if it
            # waits on its socket, `ctx.term()` makes the wait fail (ETERM).
            link.close()

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

    def _arm_ping(self, period: float) -> None:
        if self._ping_timer is not None:
            self.loop.cancel(self._ping_timer)
        self._ping_period = period
        self._ping_timer = self.loop.call_later(period, self._ping)

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


# ---- the process's client ------------------------------------------------

_lock = threading.Lock()
_client: Client | None = None
_cluster: Any = None
_address: str | None = None
_keys: Keys | None = None
_insecure = False
_atexit_registered = False


def _check_address(address: str) -> str:
    if not address.startswith(("tcp://", "ipc://")):
        raise ValueError(
            f"cluster address {address!r} is not a ZeroMQ endpoint; "
            "expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:3030) or ipc://PATH"
        )
    return address


def connect(
    address: str, keys: str | os.PathLike[str] | None = None, insecure: bool = False
) -> None:
    """Use the control daemon at `address` from now on in this process, with
    the keys folder `keys` (default: see `keys_from_env`), or none if
    `insecure`."""
    global _address, _keys, _insecure
    _check_address(address)
    loaded = load_keys(keys) if keys is not None else None
    with _lock:
        _address, _keys, _insecure = address, loaded, insecure
    _reset()


# This process's id, kept current across fork: os.getpid() is a system call,
# and get_client() runs on every call of a generated function.
_my_pid = os.getpid()


def _after_fork() -> None:
    global _my_pid
    _my_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def get_client() -> Client:
    global _client, _cluster, _atexit_registered
    client = _client
    if client is not None and client._pid == _my_pid and not client._closed:
        return client
    with _lock:
        if _client is not None and _client._pid == os.getpid() and not _client._closed:
            return _client
        if _client is not None and _client._pid != os.getpid():
            # Forked: the parent's sockets and thread are not ours.
            _client, _cluster = None, None
        env_control = os.environ.get("LUCIDITY_CONTROL")
        env_node = os.environ.get("LUCIDITY_NODE")
        if _address is not None:
            keys = _keys if _keys or _insecure else keys_from_env()
            _client = Client(_address, keys=keys)
        elif env_control:
            _client = Client(
                _check_address(env_control), local_node=env_node, keys=keys_from_env()
            )
        elif env_node:
            # A worker of a standalone node: its node is its whole cluster.
            _client = Client(
                None, local_node=env_node, static_nodes=[env_node], keys=keys_from_env()
            )
        else:
            from lucidity.cluster.embedded import start_embedded

            _cluster = start_embedded()
            _client = Client(_cluster.control, local_node=_cluster.nodes[0])
            try:
                _client.wait_for_nodes(len(_cluster.nodes), timeout=15)
            except BaseException:
                _client.close()
                _cluster.stop()
                _client, _cluster = None, None
                raise
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return _client


def _reset() -> None:
    global _client, _cluster
    with _lock:
        client, cluster = _client, _cluster
        _client, _cluster = None, None
    if client is not None and client._pid == os.getpid():
        client.close()
    if cluster is not None and cluster.pid == os.getpid():
        cluster.stop()


def shutdown() -> None:
    """Close this process's client and stop its embedded cluster, if any."""
    _reset()
