"""Callables the Executor's cluster tests send (a top-level module of its
own, not on the daemons' path: it reaches them as a shipped package)."""

from __future__ import annotations

import os


def scaled(x: int, factor: int = 1) -> tuple[int, tuple[int, int]]:
    """The product, and where it ran: this process and its parent (a node,
    for a worker; a spare worker may be gone by the time a test looks)."""
    return x * factor, (os.getpid(), os.getppid())


class Adder:
    def __init__(self, base: int) -> None:
        self.base = base

    def add(self, x: int) -> int:
        return self.base + x
