"""The node's scheduling policy: which queued job starts next, on which worker.

It owns the queue (one FIFO per nesting depth), the rule that lets blocked
workers lend their slots to deeper jobs, the choice of an idle worker for a
job's bundle, the RUN header a job starts with, and the pool's sizing rules
(surplus workers, the respawn backoff). It is pure: it may not touch a socket,
a process, a timer or the disk, so every rule here is unit-testable on plain
objects (`tests/test_node_queue.py`). The daemon (`daemon.py`) acts on its
decisions; the pool (`pool.py`) owns the processes.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    import zmq

__all__ = [
    "LEND_PER_SLOT",
    "MAX_DEPTH",
    "JobQueue",
    "Task",
    "Dispatch",
    "Slot",
    "dispatch",
    "load",
    "respawn_delay",
    "surplus",
]

# Blocked jobs also lend their slots to jobs of their own depth, up to this
# many per slot: parents blocked on children are cheap, so a few more may
# wait at once (more children in flight), within a bound.
LEND_PER_SLOT = 3
# Deeper nesting than this is refused (a runaway recursion, not a workload).
MAX_DEPTH = 1000

# Workers that die before READY (a broken import, a bad environment) are
# started again after a delay that doubles per such death in a row, from the
# first to the last of these: a crash loop costs a process start per few
# seconds, not one per 30 ms. One READY ends it.
RESPAWN_FIRST_S = 0.1
RESPAWN_MAX_S = 5.0


@dataclass(slots=True)
class Task:
    client: bytes
    job_id: int
    header: dict[str, Any]
    payload: list[zmq.Frame]
    # How deeply nested: 0 for an app's job, its parent's depth + 1 for a
    # job submitted from inside a job (see `dispatch`).
    depth: int = 0


class Slot(Protocol):
    """What the policy sees of a worker (`pool.Worker` is one)."""

    ready: bool
    task: Task | None
    blocked: bool
    bundle: str | None
    retiring: bool


W = TypeVar("W", bound=Slot)


class JobQueue:
    """Queued jobs, one FIFO per nesting depth.

    A worker blocked on child jobs lends its slot, but only to jobs deeper
    than its own: the children it waits for, or theirs. A job of depth d
    may start while the workers running unblocked, plus the blocked ones of
    depth >= d, are fewer than the slots. So an app that submits 10,000
    nested jobs at once still runs `slots` of them at a time (not 10,000
    worker processes), and children always find a slot (no deadlock):
    workers stay within slots x (depth + 1).
    """

    def __init__(self) -> None:
        self.by_depth: dict[int, collections.deque[Task]] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, task: Task) -> None:
        self.by_depth.setdefault(task.depth, collections.deque()).append(task)
        self.size += 1

    def remove(self, task: Task) -> None:
        """Remove `task`; ValueError if it is not queued."""
        queue = self.by_depth.get(task.depth)
        if queue is None:
            raise ValueError("not queued")
        if queue and queue[0] is task:
            queue.popleft()
        else:
            queue.remove(task)
        if not queue:
            del self.by_depth[task.depth]
        self.size -= 1

    def next_eligible(
        self, slots: int, running: int, blocked_depths: list[int]
    ) -> Task | None:
        """The job to start next (deepest first), or None if none may start."""
        if not blocked_depths:  # nothing lent out: the deepest job, if a slot is free
            if running >= slots or not self.by_depth:
                return None
            return self.by_depth[max(self.by_depth)][0]
        for depth in sorted(self.by_depth, reverse=True):
            blocked = sum(1 for d in blocked_depths if d >= depth)
            held = max(0, blocked - LEND_PER_SLOT * slots)
            if running + held < slots:
                return self.by_depth[depth][0]
        return None


def load(workers: Iterable[Slot]) -> tuple[int, list[int]]:
    """Workers running a job unblocked, and the depths of the blocked ones."""
    running = 0
    blocked: list[int] = []
    for w in workers:
        if w.task is not None:
            if w.blocked:
                blocked.append(w.task.depth)
            else:
                running += 1
    return running, blocked


def _idle_for(workers: Iterable[W], bundle: str | None) -> W | None:
    """An idle worker that may run a job of `bundle`: one already serving
    it, else a fresh one (which adopts it)."""
    fresh = None
    for w in workers:
        if not w.ready or w.task is not None or w.retiring:
            continue
        if w.bundle == bundle:
            return w
        if w.bundle is None and fresh is None:
            fresh = w
    return fresh


def _run_header(task: Task) -> dict[str, Any]:
    run: dict[str, Any] = {"target": task.header["target"], "depth": task.depth}
    for limit in ("memory", "fuel"):  # checked: ints, or absent
        if task.header.get(limit) is not None:
            run[limit] = task.header[limit]
    if task.header.get("batch") is not None:
        run["batch"] = task.header["batch"]
    if task.header.get("shm"):
        run["shm"] = 1  # the caller takes results through shared memory
    if task.header.get("kw"):
        run["kw"] = 1  # the payload is (args, kwargs)
    return run


@dataclass
class Dispatch(Generic[W]):
    """What to do now: start these jobs (worker, task, RUN header), and
    whether a worker must be started (`spawn`), after retiring `retire`."""

    starts: list[tuple[W, Task, dict[str, Any]]]
    spawn: bool = False
    retire: W | None = None


def dispatch(
    queue: JobQueue,
    slots: int,
    workers: Iterable[W],
    bundle_path: Callable[[str], str],
    may_retire: bool,
) -> Dispatch[W]:
    """Take from `queue` the jobs that may start now and give each an idle
    worker (the worker's `task`, and `bundle` once, are set here). When the
    next job finds no worker and none is starting, ask for one; an idle
    worker bound to another bundle then makes room for it (if `may_retire`:
    not while the respawn backoff holds starts back)."""
    pool = list(workers)
    out: Dispatch[W] = Dispatch([])
    if not queue.size:
        return out
    running, blocked = load(pool)
    while queue.size:
        task = queue.next_eligible(slots, running, blocked)
        if task is None:
            return out
        bundle = task.header.get("bundle")
        w = _idle_for(pool, bundle)
        if w is None:
            if not any(not x.ready and not x.retiring for x in pool):
                # Idle workers bound to another bundle make room for a fresh one.
                other = next(
                    (x for x in pool if x.ready and x.task is None and not x.retiring),
                    None,
                )
                if other is not None and may_retire:
                    out.retire = other
                out.spawn = True
            return out
        queue.remove(task)
        w.task = task
        running += 1
        run = _run_header(task)
        if bundle is not None and w.bundle != bundle:
            # Once per worker: it keeps its one bundle on its path.
            w.bundle = bundle
            run["bundle_path"] = bundle_path(bundle)
        out.starts.append((w, task, run))
    return out


def surplus(workers: Iterable[Slot], slots: int) -> int:
    """Workers beyond the slots and those lent out by blocked jobs."""
    live = [w for w in workers if not w.retiring]
    return len(live) - slots - sum(1 for w in live if w.blocked)


def respawn_delay(early_exits: int) -> float:
    """The wait before the next start after `early_exits` deaths before READY."""
    doublings = max(0, early_exits - 1)
    return min(RESPAWN_MAX_S, RESPAWN_FIRST_S * 2.0**doublings)
