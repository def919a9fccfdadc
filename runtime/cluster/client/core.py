"""The client: how a process (an app, or a job inside a worker) reaches the
cluster; and the process's one client (`get_client`, `connect`, `shutdown`).

One I/O thread per process owns the shared sockets: a DEALER to control (the
node list, pushed on change) and a DEALER per node (jobs out, results in).
Caller threads hand it commands and wait on the `Job` futures it completes;
a blocking call (`run`) first goes a shorter way, on its own thread's
socket. `Client` is its roles stacked, one module each:

    state -> bundles -> payload -> results -> membership -> placement
          -> dispatch -> fastpath -> Client (here: start, submit, close)

This module owns the composition and the process singleton; the roles' code
lives in their modules. Callers above the engine seam use `engine` instead.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import zmq

from lucidity._options import JobOptions
from lucidity.cluster.client.fastpath import _FastPath
from lucidity.cluster.client.payload import encode_callable
from lucidity.cluster.client.placement import MAX_SYSTEM_ATTEMPTS
from lucidity.cluster.client.state import (
    IDLE_PING_S,
    INIT_ATTEMPTS,
    SILENT_CHECKS,
    SUBSCRIBE_EVERY_S,
)
from lucidity.cluster.security import Keys, keys_from_env, load_keys
from lucidity.cluster.wire._loop import EventLoop
from lucidity.handle import Job

__all__ = [
    "IDLE_PING_S",
    "INIT_ATTEMPTS",
    "MAX_SYSTEM_ATTEMPTS",
    "SILENT_CHECKS",
    "SUBSCRIBE_EVERY_S",
    "Client",
    "connect",
    "encode_callable",
    "get_client",
    "shutdown",
]

log = logging.getLogger("lucidity.cluster.client")


class Client(_FastPath):
    """The cluster as one process sees it; all sockets live on one I/O thread,
    but for each caller thread's own sockets of the fast path (`run`)."""

    def __init__(
        self,
        control: str | None,
        local_node: str | None = None,
        static_nodes: list[str] | None = None,
        keys: Keys | None = None,
    ) -> None:
        super().__init__(control, local_node, static_nodes, keys)
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
        # Made before the I/O thread has the job: made after, both threads
        # could find none and each make one, and the caller would wait on
        # the one nobody completes.
        job = pending.job
        self._post(("submit", pending))
        return job

    def _cancel(self, job: Job[Any]) -> None:
        if not self._closed:
            self._post(("cancel", job.job_id))

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
