"""The ZeroMQ engine: `lucidity.engine.Engine` over this process's `Client`.

A thin facade: it turns the seam's calls into the client's (a callable
target and keyword arguments into what the wire takes, a node id into its
address, a batch's result tuple into a `BatchResult`) and looks the client
up on every call, so that it follows `connect`/`shutdown`. It owns no state
of its own and may not reach into the client's I/O thread or sockets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from lucidity._options import JobOptions
from lucidity.cluster.client import core
from lucidity.cluster.client.core import get_client
from lucidity.cluster.client.membership import _worker_slots as worker_slots
from lucidity.cluster.client.payload import encode_callable
from lucidity.cluster.client.results import decode_error
from lucidity.engine import BatchResult, NodeInfo, Target
from lucidity.handle import Job

__all__ = [
    "ZmqEngine",
    "connect",
    "connection",
    "get_engine",
    "restore_connection",
    "wait_for_nodes",
]


def _wire(target: Target, args: Any) -> tuple[str, Any]:
    if isinstance(target, str):
        return target, args
    return encode_callable(target, args)


def _settled(
    convert: Callable[[Future[Any], Future[BatchResult]], None],
) -> Callable[[Future[Any], Future[BatchResult]], None]:
    """`convert` a job's outcome into its batch's, and fail the batch with
    whatever `convert` raises: an exception in a done callback is only
    logged, and an unresolved batch would leave its fanout waiting for ever."""

    def settle(job: Future[Any], out: Future[BatchResult]) -> None:
        try:
            convert(job, out)
        except BaseException as exc:  # noqa: B036 - see the docstring
            if not out.done():
                try:
                    out.set_exception(exc)
                except InvalidStateError:
                    pass  # resolved meanwhile

    return settle


def _one(job: Future[Any], out: Future[BatchResult], started: float) -> None:
    """A one-item batch sent as a plain job: its outcome as a batch's."""
    if job.cancelled():
        if out.cancel():
            out.set_running_or_notify_cancel()
        return
    exc = job.exception()
    elapsed = time.monotonic() - started
    node = str(getattr(job, "node", None) or "?")
    try:
        if exc is not None:
            out.set_result(BatchResult([], (0, exc), elapsed, node))
        else:
            out.set_result(BatchResult([job.result()], None, elapsed, node))
    except InvalidStateError:
        pass  # cancelled by its caller meanwhile


def _many(job: Future[Any], out: Future[BatchResult]) -> None:
    """A batch job's result tuple (see `lucidity.cluster.node.worker`)."""
    if job.cancelled():
        if out.cancel():
            out.set_running_or_notify_cancel()
        return
    try:
        exc = job.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        values, fail, elapsed, where, waited = job.result()
        failure = None
        if fail is not None:
            failure = (fail[0], decode_error([fail[1]], where))
        out.set_result(BatchResult(values, failure, elapsed, where, waited))
    except InvalidStateError:
        pass  # cancelled by its caller meanwhile


class ZmqEngine:
    """lucidity's own daemons, reached by this process's `Client`."""

    name = "zmq"

    @staticmethod
    def _addr(node: str | None) -> str | None:
        """The address of member `node`; None (placed anywhere) if it left."""
        if node is None:
            return None
        for n in get_client()._nodes:
            if n.get("id") == node or n["addr"] == node:
                return str(n["addr"])
        return None

    def submit(
        self,
        target: Target,
        options: JobOptions,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None = None,
        *,
        local: bool = False,
        node: str | None = None,
    ) -> Job[Any]:
        name, wire_args = _wire(target, args)
        return get_client().submit(
            name, options, wire_args, kwargs=kwargs, local=local, addr=self._addr(node)
        )

    def run(
        self,
        target: Target,
        options: JobOptions,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None = None,
        *,
        local: bool = False,
    ) -> Any:
        if not isinstance(target, str):
            target, args = encode_callable(target, args)
        return get_client().run(target, options, args, kwargs=kwargs, local=local)

    def submit_batch(
        self,
        target: Target,
        options: JobOptions,
        items: Sequence[Any],
        kwargs: Mapping[str, Any] | None = None,
        *,
        node: str | None = None,
        single: bool = False,
    ) -> Future[BatchResult]:
        out: Future[BatchResult] = Future()
        client, addr = get_client(), self._addr(node)
        job: Job[Any]
        if len(items) == 1 and (options.timeout is not None or options.retries):
            # Timeouts and retries are per job: the batch wire has neither.
            item = items[0]
            name, args = _wire(target, (item,) if single else tuple(item))
            started = time.monotonic()
            job = client.submit(
                name, options, args, kwargs=kwargs, addr=addr, blocking=True
            )
            one = _settled(lambda j, o: _one(j, o, started))
            job.add_done_callback(lambda j: one(j, out))
        else:
            name, wire_items = _wire(target, list(items))
            job = client.submit(
                name,
                options,
                wire_items,
                kwargs=kwargs,
                addr=addr,
                blocking=True,
                batch="single" if single else "tuples",
            )
            many = _settled(_many)
            job.add_done_callback(lambda j: many(j, out))

        def cancel(_: Future[BatchResult]) -> None:
            if out.cancelled():
                job.cancel()

        out.add_done_callback(cancel)
        return out

    def nodes(self, timeout: float = 0.0) -> list[NodeInfo]:
        return [
            NodeInfo(str(n.get("id", n["addr"])), str(n["addr"]), worker_slots(n), n)
            for n in get_client().nodes(timeout)
        ]

    def cancel(self, job: Job[Any]) -> None:
        job.cancel()

    def close(self) -> None:
        core.shutdown()


_ENGINE = ZmqEngine()


def get_engine() -> ZmqEngine:
    """This process's ZeroMQ engine (one facade; the client behind it is
    made on first use and follows `connect`/`shutdown`)."""
    return _ENGINE


def connect(
    address: str | None,
    keys: str | os.PathLike[str] | None = None,
    *,
    insecure: bool = False,
) -> None:
    """`lucidity.connect` for this engine: the control daemon at `address`."""
    if address is None:
        raise ValueError(
            "lucidity.connect(): give the control daemon's address "
            "(e.g. tcp://127.0.0.1:3030)"
        )
    core.connect(address, keys, insecure=insecure)


def connection() -> tuple[Any, Any, bool]:
    """What `connect` last set in this process (for the pytest plugin,
    which puts it back after its cluster)."""
    return core._address, core._keys, core._insecure


def restore_connection(saved: tuple[Any, Any, bool]) -> None:
    """Go back to the `saved` connection (the client reconnects on next use)."""
    core.shutdown()
    with core._lock:
        core._address, core._keys, core._insecure = saved


def wait_for_nodes(count: int, timeout: float) -> list[NodeInfo]:
    """Wait (on the client's condition) until `count` nodes are live."""
    get_client().wait_for_nodes(count, timeout)
    return _ENGINE.nodes()
