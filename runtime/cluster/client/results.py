"""Result decoding: what a node's message says of a job, in whichever thread
received it (the I/O thread, or a caller's on the fast path).

`decode_error` reads a failure's frames into the job's own exception (or a
`RemoteError`); `_Outcome` is one run's value, error or loss; `_Results`
reads a node's message (RESULT, PONG, OUTPUT, FETCH). Acting on an outcome
(finishing or re-running the job) is the dispatcher's, not this module's.
"""

from __future__ import annotations

import logging
import pickle
from concurrent.futures import InvalidStateError
from typing import Any

import zmq

from lucidity.cluster.client.payload import _Payloads
from lucidity.cluster.client.pending import _Pending
from lucidity.cluster.wire import _shm
from lucidity.cluster.wire import protocol as p
from lucidity.errors import (
    ClusterError,
    LucidityError,
    RemoteError,
    RemoteTraceback,
    WorkerLostError,
)
from lucidity.handle import Job
from lucidity.printer import show_dropped, show_output

__all__ = ["_Outcome", "_Results", "decode_error"]

log = logging.getLogger("lucidity.cluster.client")


def decode_error(frames: list[Any], node: str) -> BaseException:
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


# The name the client's modules (and the Ray engine) knew it by.
_decode_error = decode_error


class _Results(_Payloads):
    """A node's messages read (see the module docstring)."""

    def _node_message(
        self, sock: zmq.Socket[Any], frames: list[Any], addr: str
    ) -> tuple[int, dict[str, Any]] | None:
        """The job id and header of a RESULT from a node; PONG, FETCH
        (answered here) and bad frames (logged) are None. Called by the
        thread that owns `sock`."""
        try:
            msg = p.decode(frames[0].buffer)
            if msg.type == p.MsgType.RESULT:
                if "dropped" in msg.header:  # job output its node could not send
                    show_dropped(msg.header["dropped"])
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
        error = decode_error(payload, node)
        if isinstance(error, WorkerLostError):
            return _Outcome(lost=(str(error), WorkerLostError))
        return _Outcome(error=error)
