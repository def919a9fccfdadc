"""Deadlines on one thread: timeouts and deferred calls of the Ray engine.

One daemon thread waits on a condition until the next deadline (it never
polls) and runs what is due; `call` runs a function on that long-lived
thread and waits for it (Ray's processes die with the thread that started
them, see `RayEngine`).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["Timers"]


class Timers:
    """Timeouts and deferred re-runs, on one thread that waits on a condition
    until the next deadline (never polls)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[Callable[[], None] | None]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, daemon=True, name="ray-timers"
        )
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], None]) -> list[Any]:
        entry: list[Any] = [fn]
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), entry))
            self._cond.notify()
        return entry

    @staticmethod
    def cancel(entry: list[Any] | None) -> None:
        if entry is not None:
            entry[0] = None

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on this thread and return its value (or raise its error)."""
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: B036 - the caller's to raise
                done.set_exception(exc)

        self.call_at(0.0, run)
        return done.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                fn = heapq.heappop(self._heap)[2][0]
                if fn is None:
                    continue
                self._cond.release()
                try:
                    fn()
                finally:
                    self._cond.acquire()
