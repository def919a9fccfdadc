"""Jobs of every parameter kind, with defaults the stubs cannot repeat, and
`async def` jobs: what `tests/test_runtime_signatures.py` runs.

A default evaluated where the job runs (`os.getpid()` at import) tells the
test that the function's own default applied: the stubs never import this
module, so they cannot have sent it.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from lucidity import job


@dataclass(frozen=True)
class Point:
    x: float
    y: float


ORIGIN = Point(0.0, 0.0)
# The pid of the process that imported this module: a worker's, where jobs run.
IMPORTED_BY = os.getpid()


@job
def keyword_only(a: int, *, scale: int = 2, offset: int) -> int:
    return a * scale + offset


@job
def var_positional(first: int, *rest: int) -> tuple[int, ...]:
    return (first, *rest)


@job
def var_keyword(name: str, **extra: int) -> dict[str, object]:
    return {"name": name, **extra}


@job
def positional_only(a: int, b: int = 3, /) -> int:
    return a - b


@job
def own_defaults(
    a: int,
    pid: int = IMPORTED_BY,
    /,
    q: Point = ORIGIN,
    *,
    label: str = "x",
    seen: list[int] = [],  # noqa: B006 - the job's own list, never sent
) -> tuple[int, int, int, Point, str, list[int]]:
    """What the job got: which defaults applied shows where they came from."""
    return a, pid, os.getpid(), q, label, seen


@job
def distance(p: Point, q: Point = ORIGIN, *, scale: float = 1.0) -> float:
    return scale * ((p.x - q.x) ** 2 + (p.y - q.y) ** 2) ** 0.5


@job
async def async_square(a: int, *, delay: float = 0.0) -> int:
    await asyncio.sleep(delay)
    return a * a


@job
async def async_children(n: int) -> tuple[int, list[int]]:
    """Awaits `n` children started on its own node: with one worker per node
    they run only because awaiting lends that worker's slot out."""
    from lucidity_rtapp.signatures_jobs import async_square_local_async

    values = await asyncio.gather(*(async_square_local_async(i) for i in range(n)))
    return os.getpid(), list(values)


@job
def sync_parent(n: int) -> tuple[int, tuple[int, list[int]]]:
    """A `def` job waiting on an `async def` job that waits on its children,
    all on this node (one worker)."""
    from lucidity_rtapp.signatures_jobs import async_children_local

    return os.getpid(), async_children_local(n)


@job(fuel=3)
async def async_spin(seconds: float) -> int:
    """Burns CPU inside its event loop past its fuel (0.3 s of CPU time)."""
    import time

    end = time.process_time() + seconds
    spins = 0
    while time.process_time() < end:
        spins += 1
        if spins % 100_000 == 0:
            await asyncio.sleep(0)
    return spins
