"""A job this client has submitted and not yet seen finish, and its helpers.

`_Pending` is the record every role of the client passes around (its frames,
options, attempts, placement, timer); `_fail` completes a job with an error
unless its caller cancelled it first. Owns no socket and no shared state.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

from lucidity._options import JobOptions
from lucidity.handle import Job

if TYPE_CHECKING:
    from lucidity.cluster.client.state import ClientState

__all__ = ["_Pending", "_fail", "_largest", "_random_addr", "_restarted"]

log = logging.getLogger("lucidity.cluster.client")

_random = random.random


def _random_addr(nodes: list[dict[str, Any]]) -> str:
    """The address of a node picked at random: random.choice without its two
    Python-level calls (the fast path picks one per call)."""
    return str(nodes[int(_random() * len(nodes))]["addr"])


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
        client: ClientState,
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
