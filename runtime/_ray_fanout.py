"""The Ray engine's fanout driver (provisional, until the engine-neutral
driver stands above the `Engine` seam): batched tasks, bounded in flight.

Items go in chunks, one Ray task each, sized like the ZeroMQ client's
(`_ChunkSizer`), at most FANOUT_WINDOW_PER_SLOT chunks per CPU of the
cluster in flight, collected with `ray.wait`, which (like `ray.get`) lends a
Ray worker's CPU while it waits, so a fanout inside a job cannot starve it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sized
from typing import TYPE_CHECKING, Any

import ray

from lucidity._options import JobOptions
from lucidity.client import FANOUT_WINDOW_PER_SLOT, _ChunkSizer
from lucidity.engine import Target
from lucidity.handle import Job

if TYPE_CHECKING:
    from lucidity.ray_engine import RayEngine

__all__ = ["fanout"]


def fanout(
    engine: RayEngine,
    target: Target,
    options: JobOptions,
    items: Iterable[Any],
    single: bool = False,
) -> list[Any]:
    """Run `target` once per item; results in input order.

    Items go in chunks (one task each) sized to run about CHUNK_TARGET_S,
    at most FANOUT_WINDOW_PER_SLOT chunks per CPU of the cluster in
    flight; a job with `timeout` or `retries` goes one job per item. On a
    failure nothing more is started; what is out finishes, then the first
    failure in input order is raised.
    """
    slots = max(1, sum(n.slots for n in engine._alive()))
    window = FANOUT_WINDOW_PER_SLOT * slots
    if options.timeout is not None or options.retries:
        return _fanout_jobs(engine, target, options, items, single, window)
    total = len(items) if isinstance(items, Sized) else None
    source = iter(items)
    results: list[Any] = []
    failures: dict[int, BaseException] = {}
    out: dict[Any, int] = {}
    sizer = _ChunkSizer()
    index = 0
    more = True
    try:
        while True:
            while more and not failures and len(out) < window:
                left = None if total is None else total - index
                chunk = list(itertools.islice(source, sizer.size(left, slots)))
                if not chunk:
                    more = False
                    break
                results.extend(itertools.repeat(None, len(chunk)))
                out[engine._batch_ref(target, options, chunk, single, None)] = index
                index += len(chunk)
            if not out:
                break
            ready, _ = ray.wait(list(out), num_returns=1)
            for ref in ready:
                first = out.pop(ref)
                values, fail, elapsed, _ = engine._batch_result(target, first, ref)
                results[first : first + len(values)] = values
                sizer.observe(len(values) + (fail is not None), elapsed)
                if fail is not None:
                    failures[first + fail[0]] = fail[1]
    except BaseException:
        for ref in out:
            ray.cancel(ref, force=True)
        raise
    if failures:
        raise failures[min(failures)]
    return results


def _fanout_jobs(
    engine: RayEngine,
    target: Target,
    options: JobOptions,
    items: Iterable[Any],
    single: bool,
    window: int,
) -> list[Any]:
    """A fanout of jobs with per-item `timeout` or `retries`: one job per
    item, waited for in input order."""
    results: list[Any] = []
    out: deque[Job[Any]] = deque()
    first_error: BaseException | None = None

    def collect() -> None:
        nonlocal first_error
        job = out.popleft()
        try:
            results.append(job.result())
        except BaseException as exc:  # noqa: B036 - the item's failure
            if first_error is None:
                first_error = exc

    try:
        for item in items:
            while len(out) >= window or (out and first_error is not None):
                collect()
            if first_error is not None:
                break
            args = (item,) if single else tuple(item)
            out.append(engine.submit(target, options, args))
        while out:
            collect()
    except BaseException:
        for job in out:
            job.cancel()
        raise
    if first_error is not None:
        raise first_error
    return results
