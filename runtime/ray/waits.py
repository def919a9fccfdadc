"""Waits inside a Ray task: through `ray.wait`, which lends the worker's CPU.

A Ray worker gives its CPU back to other tasks only while it waits in
`ray.get`/`ray.wait`; a wait on a future's condition would hold it, and
nested jobs on a full cluster would deadlock. `RefWaits` knows the current
Ray task of each future the engine handed out (a job's changes when it is
run again) and waits on those.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from lucidity.handle import Job

__all__ = ["RefWaits"]


class RefWaits:
    """The Ray task behind each future out, and a condition told whenever
    one changes or a future ends."""

    def __init__(
        self, active: bool, fetched: Callable[[Job[Any], Any, Any], None]
    ) -> None:
        # Only a Ray worker's waits go through here (the wait hook its task
        # set): elsewhere tracking would cost every job a lock and a notify.
        self.active = active
        # fetched(job, ref, outcome): settles `job` from its task `ref`'s
        # outcome (or Ray error), once whoever calls it, its completion
        # callback included. Looked up by job id, not kept per job: a value
        # that held its job would keep this weak dictionary's key alive.
        self._fetched = fetched
        self._refs: weakref.WeakKeyDictionary[Future[Any], Any] = (
            weakref.WeakKeyDictionary()
        )
        self._changed = threading.Condition()

    def track(self, future: Future[Any], ref: Any) -> None:
        """`future` now waits on `ref` (a Ray task, or a Job of ours)."""
        if self.active:
            with self._changed:
                self._refs[future] = ref
                self._changed.notify_all()

    def told(self) -> None:
        """A future ended (or was cancelled)."""
        if self.active:
            with self._changed:
                self._changed.notify_all()

    def _ref_of(self, future: Future[Any]) -> Any:
        ref = self._refs.get(future)
        if isinstance(ref, Job):
            return self._refs.get(ref)  # a one-job batch: the job's task
        return ref

    def _fetch(self, future: Future[Any], timeout: float | None) -> bool:
        """One job waited on (`Job.result`): `ray.get` its task here and
        settle it, rather than `ray.wait` and then wait for Ray's callback
        thread to run its completion (a hop per job). False: not such a job
        (or no task yet), or not done yet (its run again was started)."""
        if not isinstance(future, Job):
            return False
        with self._changed:
            if future.done():
                return True
            ref = self._refs.get(future)
        if ref is None or isinstance(ref, Job):
            return False
        try:
            outcome = ray.get(ref, timeout=timeout)
        except GetTimeoutError:
            return True  # `timeout` passed: the caller sees it not done
        except RayError as exc:
            outcome = exc  # what its completion callback is given too
        self._fetched(future, ref, outcome)
        return future.done()

    def wait_any(self, futures: Sequence[Future[Any]], timeout: float | None) -> None:
        """Until one of `futures` (of this engine) is done, or `timeout` s:
        through `ray.wait`, which lends this Ray worker's CPU meanwhile. A
        task already seen ready whose future is not yet set (its callback is
        on its way) is waited for on `_changed`, not asked again."""
        if not self.active:  # nothing tracked: the futures' own wait
            futures_wait(futures, timeout, return_when=FIRST_COMPLETED)
            return
        if len(futures) == 1 and self._fetch(futures[0], timeout):
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: set[Any] = set()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            with self._changed:
                if any(f.done() for f in futures):
                    return
                refs = {self._ref_of(f) for f in futures} - seen - {None}
                if not refs:
                    self._changed.wait(left)
                    continue
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=left)
            seen.update(ready)
