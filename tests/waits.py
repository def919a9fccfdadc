"""Bounded waits for the tests (a test may poll; the runtime never does)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """`cond()`'s first true value, checked every 10 ms; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def in_thread(fn: Callable[[], T]) -> Future[T]:
    """Run a blocking call in a daemon thread; wait on it with a timeout."""
    fut: Future[T] = Future()

    def target() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # noqa: B036 - handed to the test
            fut.set_exception(exc)

    threading.Thread(target=target, daemon=True, name="bounded-call").start()
    return fut


def bounded(fn: Callable[[], T], timeout: float) -> T:
    """`fn()` run in a daemon thread; fail the test if it overruns."""
    fut = in_thread(fn)
    # Not `except TimeoutError` around result(): a job's JobTimeoutError is one.
    done, _ = futures.wait([fut], timeout)
    if not done:
        pytest.fail(f"{fn!r} did not finish within {timeout} s (deadlock?)")
    return fut.result()
