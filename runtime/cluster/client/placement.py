"""Placement (I/O thread): which node a job goes to, and what happens when
it cannot go, or its run is lost.

`_Placement` picks a node (pinned, or at random among those whose message
limit takes the job, of this host for shared-memory arguments), parks a job
until a node joins (bounded by INIT_ATTEMPTS), arms its timeout, and runs a
lost job again elsewhere (bounded by MAX_SYSTEM_ATTEMPTS). It hands frames
to the dispatcher's `_send`; it never touches a socket itself.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from typing import Any

import zmq

from lucidity.cluster.client.membership import _Membership
from lucidity.cluster.client.pending import _fail, _Pending, _random_addr
from lucidity.cluster.client.state import INIT_ATTEMPTS
from lucidity.errors import (
    ClusterError,
    JobTimeoutError,
    MessageTooLargeError,
    WorkerLostError,
)

__all__ = ["MAX_SYSTEM_ATTEMPTS", "_Placement"]

log = logging.getLogger("lucidity.cluster.client")

# Runs of one job after its node or worker was lost, before it fails.
MAX_SYSTEM_ATTEMPTS = 3
_MiB = 1024 * 1024
_random = random.random


class _Placement(_Membership):
    """Where jobs go, and again (see the module docstring)."""

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
