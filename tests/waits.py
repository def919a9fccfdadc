"""Bounded waits for the tests (a test may poll; the runtime never does)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


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
