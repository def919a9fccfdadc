"""The bridge from `Engine` to today's ZeroMQ client (`lucidity.cluster.client.core`).

BRIDGE: this module lives only until the client is split by role and
implements `Engine` itself behind `get_engine()`; then it goes, and nothing
above the seam changes. It is the one place the Executor, the joblib backend
and the pytest plugin touch the client, through `get_client()` on every call
so that it follows `lucidity.connect`/`shutdown`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from lucidity._options import JobOptions
from lucidity.cluster.client import core as _client
from lucidity.engine import BatchResult, NodeInfo, Target
from lucidity.handle import Job

__all__ = [
    "ClientEngine",
    "client_engine",
    "connection",
    "restore_connection",
    "wait_for_nodes",
]


def _wire(
    target: Target, args: Any, kwargs: Mapping[str, Any] | None
) -> tuple[str, Any]:
    """`target` and its arguments as the client sends them. Keyword arguments
    ride in a `functools.partial` (the wire has positional arguments only)."""
    if kwargs:
        if isinstance(target, str):
            raise TypeError(
                f"keyword arguments to job {target} by reference are not "
                "supported yet; pass the function itself"
            )
        target = functools.partial(target, **kwargs)
    if isinstance(target, str):
        return target, args
    return _client.encode_callable(target, args)


class ClientEngine:
    """`Engine` over this process's `lucidity.cluster.client.core.Client`."""

    name = "zmq"

    def _addr(self, node: str | None) -> str | None:
        if node is None:
            return None
        for n in _client.get_client().nodes():
            if n.get("id") == node or n.get("addr") == node:
                return str(n["addr"])
        raise ValueError(f"no live node {node!r} in the cluster")

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
        name, wire_args = _wire(target, args, kwargs)
        return _client.get_client().submit(
            name, options, wire_args, local=local, addr=self._addr(node)
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
        name, wire_args = _wire(target, args, kwargs)
        return _client.get_client().run(name, options, wire_args, local=local)

    def submit_batch(
        self,
        target: Target,
        options: JobOptions,
        items: Sequence[tuple[Any, ...]],
        kwargs: Mapping[str, Any] | None = None,
        *,
        node: str | None = None,
    ) -> Future[BatchResult]:
        name, wire_items = _wire(target, list(items), kwargs)
        job = _client.get_client().submit(
            name, options, wire_items, addr=self._addr(node), batch="tuples"
        )
        out: Future[BatchResult] = Future()

        def done(job: Future[Any]) -> None:
            if job.cancelled():
                if out.cancel():
                    out.set_running_or_notify_cancel()
                return
            try:
                exc = job.exception()
                if exc is not None:
                    out.set_exception(exc)
                    return
                values, fail, elapsed, where = job.result()
                failure = None
                if fail is not None:
                    failure = (fail[0], _client._decode_error([fail[1]], where))
                out.set_result(BatchResult(values, failure, elapsed, where))
            except InvalidStateError:
                pass  # cancelled by its caller meanwhile

        def cancel(_: Future[BatchResult]) -> None:
            if out.cancelled():
                job.cancel()

        job.add_done_callback(done)
        out.add_done_callback(cancel)
        return out

    def nodes(self, timeout: float = 0.0) -> list[NodeInfo]:
        return [
            NodeInfo(
                str(n.get("id", n["addr"])),
                str(n["addr"]),
                max(1, int(n.get("workers", 1))),
                dict(n),
            )
            for n in _client.get_client().nodes(timeout)
        ]

    def cancel(self, job: Job[Any]) -> None:
        job.cancel()

    def close(self) -> None:
        _client.shutdown()


_ENGINE = ClientEngine()


def client_engine() -> ClientEngine:
    return _ENGINE


def connection() -> tuple[Any, Any]:
    """What `lucidity.connect` last set in this process (for the pytest
    plugin, which puts it back after its cluster)."""
    return _client._address, _client._keys


def restore_connection(saved: tuple[Any, Any]) -> None:
    """Close the current client and go back to the `saved` connection (the
    client reconnects on next use)."""
    _client.shutdown()
    with _client._lock:
        _client._address, _client._keys = saved


def wait_for_nodes(count: int, timeout: float) -> list[NodeInfo]:
    """Wait (on the client's condition) until `count` nodes are live."""
    _client.get_client().wait_for_nodes(count, timeout)
    return _ENGINE.nodes()
