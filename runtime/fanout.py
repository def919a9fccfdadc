"""The fanout driver: one function run over many items, on any engine.

`fanout` sends the items in batches through `Engine.submit_batch`, sized by
`ChunkSizer` to run about CHUNK_TARGET_S each where they run, at most
FANOUT_WINDOW_PER_SLOT batches in flight per slot of the engine's nodes, the
rest read from the (maybe lazy) input as results come back. Results come
back in input order; on a failure nothing more is submitted, what is out
finishes, then the first failure in input order is raised. Only a real
interrupt of the caller (KeyboardInterrupt, SystemExit...) cancels what is
out. A job with a `timeout` or `retries` goes one item per batch, since both
are per item. In an engine's worker that set a wait hook (Ray's, where a
worker lends its CPU only while it waits through Ray), the driver's waits go
through that hook, so a fanout inside a job does not hold its CPU.

This module owns the chunking, the window and the order of a fanout. It is
engine-neutral: it uses only `lucidity.engine.Engine` (`submit_batch`,
`nodes`), never an engine's own modules or wire formats.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Iterable, Mapping, Sized
from concurrent.futures import Future
from typing import Any

from lucidity._options import JobOptions
from lucidity.engine import BatchResult, Engine, Target, target_name
from lucidity.errors import JobCancelledError
from lucidity.handle import blocking, wait_hook
from lucidity.printer import settle
from lucidity.progress import FanoutProgress

__all__ = [
    "CHUNK_MAX_ITEMS",
    "CHUNK_MIN_ITEMS",
    "CHUNK_TARGET_S",
    "FANOUT_WINDOW_PER_SLOT",
    "ChunkSizer",
    "fanout",
]

# Batches of one fanout in flight per slot of the cluster; the rest stream in
# as results come back.
FANOUT_WINDOW_PER_SLOT = 4
# A batch is sized to run about this long where it runs: long enough that the
# cost of a message (~0.1-0.5 ms) is noise, short enough to balance nodes.
CHUNK_TARGET_S = 0.02
# ...and never more items than this in one batch; fewer than CHUNK_MIN_ITEMS
# go one per batch (a small fanout stays spread out).
CHUNK_MAX_ITEMS = 8192
CHUNK_MIN_ITEMS = 4


class ChunkSizer:
    """How many fanout items go in the next batch.

    Until a batch has come back nothing is known about the job's cost, so
    items go one per batch (a window of them: a slow job is spread over every
    node at once). Then batches are sized from the measured time per item, as
    the engine reports it, to take about CHUNK_TARGET_S; when the number of
    items left is known, no batch takes more than its share of the tail.
    """

    __slots__ = ("per_item_s",)

    def __init__(self) -> None:
        self.per_item_s: float | None = None

    def observe(self, count: int, elapsed_s: float) -> None:
        if count <= 0:
            return
        seen = elapsed_s / count
        last = self.per_item_s
        self.per_item_s = seen if last is None else (last + seen) / 2

    def size(self, left: int | None, slots: int) -> int:
        if self.per_item_s is None:
            return 1
        size = int(CHUNK_TARGET_S / max(self.per_item_s, 1e-9))
        if left is not None:
            size = min(size, -(-left // (2 * slots)))
        if size < CHUNK_MIN_ITEMS:
            return 1  # a batch of 2 or 3 saves little and costs the spread
        return min(size, CHUNK_MAX_ITEMS)


# Where a fanout's first batch goes (round-robin): fanouts in turn start on
# different nodes.
_starts = itertools.count()


def _per_item(options: JobOptions) -> bool:
    return options.timeout is not None or options.retries > 0


class _Run:
    """One fanout's state, shared by its caller and the engine's completions."""

    def __init__(self, name: str, total: int | None) -> None:
        self.name = name
        self.results: list[Any] = []
        self.failures: dict[int, BaseException] = {}
        # Batches out, by the index of their first item.
        self.out: dict[int, Future[BatchResult]] = {}
        self.cond = threading.Condition()
        self.sizer = ChunkSizer()
        self.progress = FanoutProgress(name, total)

    def done(self, first: int, future: Future[BatchResult]) -> None:
        """A batch came back (any thread: the engine's)."""
        with self.cond:
            self.out.pop(first, None)
            if future.cancelled():
                self.failures[first] = JobCancelledError(
                    f"fanout item {first} of {self.name} was cancelled"
                )
            elif future.exception() is not None:
                self.failures[first] = future.exception()  # type: ignore[assignment]
            else:
                batch = future.result()
                values, failure = batch.values, batch.failure
                ran = len(values) + (failure is not None)
                self.results[first : first + len(values)] = values
                self.sizer.observe(ran, batch.elapsed_s)
                self.progress.done += ran
                if failure is not None:
                    self.failures[first + failure[0]] = failure[1]
            self.cond.notify_all()

    def wait(self) -> None:
        """Wait (holding `cond`) until a batch out comes back."""
        hook = wait_hook()
        if hook is None:
            self.cond.wait()
            return
        futures = list(self.out.values())
        if any(f.done() for f in futures):
            self.cond.wait()  # its callback is on its way: it notifies
            return
        self.cond.release()
        try:
            hook(futures, None)
        finally:
            self.cond.acquire()


def fanout(
    engine: Engine,
    target: Target,
    options: JobOptions,
    items: Iterable[Any],
    *,
    single: bool = False,
    kwargs: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Run `target` once per item on `engine`; the results in input order.

    Items are argument tuples, or with `single` each item is the lone
    argument; `kwargs` are keyword arguments of every item. See the module
    docstring for the batches, the window and failures.
    """
    total = len(items) if isinstance(items, Sized) else None
    source = iter(items)
    # First: an engine made on first use starts here (an embedded cluster
    # takes a second), before the progress bar's clock does.
    nodes = engine.nodes()
    run = _Run(target_name(target), total)
    cond, out = run.cond, run.out
    rr = next(_starts)
    with blocking():
        try:
            index = 0
            for batch_no in itertools.count():
                if batch_no:
                    nodes = engine.nodes()
                slots = max(1, sum(n.slots for n in nodes))
                with cond:
                    while (
                        len(out) >= FANOUT_WINDOW_PER_SLOT * slots and not run.failures
                    ):
                        run.wait()
                    if run.failures:
                        break
                    left = None if total is None else total - index
                    size = 1 if _per_item(options) else run.sizer.size(left, slots)
                try:
                    chunk = list(itertools.islice(source, size))
                    if not chunk:
                        break
                    with cond:
                        run.results.extend(itertools.repeat(None, len(chunk)))
                    node = None
                    if nodes and options.fanout != "random":
                        node = nodes[(rr + batch_no) % len(nodes)].id
                    future = engine.submit_batch(
                        target, options, chunk, kwargs, node=node, single=single
                    )
                except Exception as exc:
                    # Not sent (its input or its submission failed): a failure
                    # at this index, like an item's; what is out finishes.
                    with cond:
                        run.failures[index] = exc
                    break
                with cond:
                    out[index] = future
                future.add_done_callback(functools.partial(run.done, index))
                index += len(chunk)
        except BaseException:
            # An interrupt of the caller (KeyboardInterrupt...): stop what is out.
            with cond:
                pending = list(out.values())
            for future in pending:
                future.cancel()
            raise
        finally:
            with cond:
                while out:
                    run.wait()
            run.progress.close()
            settle()  # the items' lines before what the caller prints next
    if run.failures:
        raise run.failures[min(run.failures)]
    return run.results
