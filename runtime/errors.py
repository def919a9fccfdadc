"""The exceptions lucidity raises, one type per failure a caller can act on."""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ClusterError",
    "FuelExhaustedError",
    "JobCancelledError",
    "JobTimeoutError",
    "KeysError",
    "LucidityError",
    "MemoryLimitError",
    "MessageTooLargeError",
    "NoNodesError",
    "RemoteError",
    "RemoteTraceback",
    "WorkerLostError",
]


class LucidityError(Exception):
    """Base of every error lucidity itself raises."""


class ClusterError(LucidityError):
    """The cluster cannot be reached or cannot run the job (names the address)."""


class NoNodesError(ClusterError):
    """No live node to place a job on, after the job's init retries."""


class WorkerLostError(ClusterError):
    """The worker process running a job died before answering."""


class AuthenticationError(ClusterError):
    """The cluster refused this client's handshake: no keys, wrong keys, or a
    key that is not (or no longer) authorised. Says where to set the keys."""


class MessageTooLargeError(ClusterError):
    """A job's arguments are over its node's `--max-message-mb`, or its result
    over the caller's `LUCIDITY_MAX_MESSAGE_MB`: it fails once, before the
    message is sent (ZeroMQ would drop the connection). Names size and limit."""


class KeysError(LucidityError):
    """A keys folder is missing, incomplete or unreadable (names the file)."""


class JobTimeoutError(LucidityError, TimeoutError):
    """A job ran past its `timeout`."""


class JobCancelledError(LucidityError):
    """A job was cancelled before it finished."""


class RemoteTraceback(Exception):
    """Carries the remote traceback text; attached as `__cause__` of a remote error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


class RemoteError(LucidityError):
    """A job raised an exception that cannot be re-raised with its own type here.

    Carries the remote type name, message, traceback and the node it ran on,
    like ipyparallel's `RemoteError`.
    """

    def __init__(self, ename: str, evalue: str, traceback: str, node: str) -> None:
        super().__init__(f"{ename}: {evalue} (on node {node})")
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.node = node

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.ename, self.evalue, self.traceback, self.node))


class MemoryLimitError(LucidityError, MemoryError):
    """A job's process went past the job's `memory` limit; its worker was replaced."""


class FuelExhaustedError(LucidityError):
    """A job used up its `fuel` (CPU time, 100 ms a unit); its worker was replaced."""
