"""CPU lists as `lucidity node --cpus` takes them ("0-3,6"), and the shares
the embedded cluster gives its nodes."""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["available", "format_cpus", "parse_cpus", "split"]


def available() -> frozenset[int]:
    """The CPUs this process may run on."""
    return frozenset(os.sched_getaffinity(0))


def parse_cpus(text: str) -> frozenset[int]:
    """ "0-3,6" -> {0, 1, 2, 3, 6}; ValueError saying what is wrong, for
    text that is not a CPU list or names a CPU this process may not use."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ValueError(f"{text!r} is not a CPU list (e.g. 0-3,6)") from None
        if not 0 <= low <= high:
            raise ValueError(f"{part!r} in {text!r} is not a CPU range (e.g. 0-3)")
        cpus.update(range(low, high + 1))
    outside = cpus - available()
    if outside:
        raise ValueError(
            f"CPU {format_cpus(outside)} is not available here "
            f"(this process may use {format_cpus(available())})"
        )
    return frozenset(cpus)


def format_cpus(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 3, 6} -> "0-3,6"."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def split(cpus: Iterable[int], parts: int) -> list[list[int]] | None:
    """`cpus` in `parts` shares as even as can be, in order; None when there
    are fewer CPUs than parts (nothing to give each its own)."""
    ordered = sorted(cpus)
    if parts < 1 or len(ordered) < parts:
        return None
    return [
        ordered[i * len(ordered) // parts : (i + 1) * len(ordered) // parts]
        for i in range(parts)
    ]
