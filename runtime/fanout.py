"""The fanout driver: one function run over many items, on any engine.

`fanout` sends the items in batches through `Engine.submit_batch`, sized by
`lucidity.chunks.ChunkSizer` from what the engine reports of each, at most
FANOUT_WINDOW_PER_SLOT batches in flight per slot of the engine's nodes, the
rest read from the (maybe lazy) input as results come back. Results come
back in input order; on a failure nothing more is submitted, what is out
finishes, then the first failure in input order is raised. Only a real
interrupt of the caller (KeyboardInterrupt, SystemExit, a timeout, an early
close of the stream) cancels what is out. A job with a `timeout` or
`retries` goes one item per batch, since both are per item. In an
engine's worker that set a wait hook (Ray's, where a worker lends its CPU
only while it waits through Ray), the driver's waits go through that hook,
so a fanout inside a job does not hold its CPU.

`fanout` returns the list; `fanout_iter` (what `Executor.map` uses) streams
the same run, each result yielded as soon as those before it are, more of
the input read and sent as the consumer takes them.

This module owns the window, the order and the failures of a fanout (the
sizing of its batches is `lucidity.chunks`'s). It is engine-neutral: it uses
only `lucidity.engine.Engine` (`submit_batch`,
`nodes`), never an engine's own modules or wire formats.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sized
from concurrent import futures
from concurrent.futures import Future
from typing import Any

from lucidity._options import JobOptions
from lucidity.chunks import ChunkSizer
from lucidity.engine import BatchResult, Engine, Target, target_name
from lucidity.errors import JobCancelledError
from lucidity.handle import blocking, hooked_wait, wait_hook
from lucidity.printer import settle
from lucidity.progress import FanoutProgress

__all__ = [
    "FANOUT_WINDOW_PER_SLOT",
    "SendBatch",
    "fanout",
    "fanout_iter",
]

# Batches of one fanout in flight per slot of the cluster; the rest stream in
# as results come back.
FANOUT_WINDOW_PER_SLOT = 4
# Where a fanout's first batch goes (round-robin): fanouts in turn start on
# different nodes.
_starts = itertools.count()


# How a batch is sent: `Engine.submit_batch`'s signature.
SendBatch = Callable[..., Future[BatchResult]]


def _per_item(options: JobOptions) -> bool:
    return options.timeout is not None or options.retries > 0


class _Run:
    """One fanout's state, shared by its caller and the engine's completions."""

    def __init__(self, name: str, total: int | None) -> None:
        self.name = name
        # Batches come back, by the index of their first item, until taken.
        self.values: dict[int, list[Any]] = {}
        self.failures: dict[int, BaseException] = {}
        # Batches out, by the index of their first item.
        self.out: dict[int, Future[BatchResult]] = {}
        self.cond = threading.Condition()
        self.sizer = ChunkSizer()
        self.progress = FanoutProgress(name, total)

    def done(self, first: int, future: Future[BatchResult]) -> None:
        """A batch came back (any thread: the engine's)."""
        with self.cond:
            try:
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
                    self.values[first] = values
                    self.sizer.observe(ran, batch.elapsed_s, batch.waited_s)
                    self.progress.done += ran
                    if failure is not None:
                        self.failures[first + failure[0]] = failure[1]
            except BaseException as exc:  # noqa: B036 - else its caller waits for ever
                # A callback's exception is only logged by the future: the
                # batch is a failure at its place instead, and the caller
                # is woken to raise it.
                self.failures.setdefault(first, exc)
            finally:
                self.cond.notify_all()

    def wait(self, timeout: float | None = None) -> None:
        """Wait (holding `cond`) until a batch out comes back, or `timeout`."""
        hook = wait_hook()
        if hook is None:
            self.cond.wait(timeout)
            return
        futures = list(self.out.values())
        if not futures or any(f.done() for f in futures):
            self.cond.wait(timeout)  # its callback is on its way: it notifies
            return
        self.cond.release()
        try:
            hooked_wait(hook, futures, timeout)
        finally:
            self.cond.acquire()


def _batches(
    engine: Engine,
    target: Target,
    options: JobOptions,
    items: Iterable[Any],
    single: bool,
    kwargs: Mapping[str, Any] | None,
    size: int | None,
    ahead: int | None,
    deadline: float | None,
    send: SendBatch | None,
) -> Generator[list[Any], None, None]:
    """The driver: each batch's values in input order, as they come back.

    It first yields an empty list once the first window is out (see
    `fanout_iter`), then sends more only while its consumer is in it.
    """
    total = len(items) if isinstance(items, Sized) else None
    source = iter(items)
    submit = engine.submit_batch if send is None else send
    # First: an engine made on first use starts here (an embedded cluster
    # takes a second), before the progress bar's clock does.
    nodes = engine.nodes()
    run = _Run(target_name(target), total)
    cond, out, failures = run.cond, run.out, run.failures
    rr = next(_starts)
    fixed = 1 if _per_item(options) else size
    # Batches sent and not yet taken, by the index of their first item.
    sent: deque[int] = deque()
    index = batch_no = 0
    slots = 1
    sending = True
    # Past the first yield, the batch the consumer waits on counts as taken
    # (as 3.14's map submits one more before it waits on the oldest).
    taken = 0
    abandoned = False
    failure: BaseException | None = None

    def room() -> bool:
        return (
            sending
            and not failures
            and len(out) < FANOUT_WINDOW_PER_SLOT * slots
            and (ahead is None or len(sent) < ahead + taken)
        )

    try:
        while True:
            while sending:
                if batch_no:
                    nodes = engine.nodes()
                slots = max(1, sum(n.slots for n in nodes))
                with cond:
                    if not room():
                        sending = sending and not failures
                        break
                    left = None if total is None else total - index
                    n = run.sizer.size(left, slots) if fixed is None else fixed
                try:
                    chunk = list(itertools.islice(source, n))
                    if not chunk:
                        sending = False
                        break
                    node = None
                    if nodes and options.fanout != "random":
                        node = nodes[(rr + batch_no) % len(nodes)].id
                    future = submit(
                        target, options, chunk, kwargs, node=node, single=single
                    )
                except Exception as exc:
                    # Not sent (its input or its submission failed): a failure
                    # at this index, like an item's; what is out finishes.
                    with cond:
                        failures[index] = exc
                    sending = False
                    break
                with cond:
                    out[index] = future
                sent.append(index)
                future.add_done_callback(functools.partial(run.done, index))
                index += len(chunk)
                batch_no += 1
            if not taken:
                try:
                    yield []
                except GeneratorExit:
                    abandoned = True
                    raise
                taken = 1
                continue  # the consumer is here: send what that frees first
            if not sent:
                break
            head = sent[0]
            with cond:
                while head in out and not room():
                    _wait(run, deadline)
                if head in out:
                    continue  # room for more first
                values = run.values.pop(head, [])
            sent.popleft()
            end = head + len(values)
            if values:
                yield values
            del values
            with cond:
                if failures and min(failures) <= end:
                    failure = failures[min(failures)]
                    break
        with cond:
            if failures:  # one not sent: after every batch that was
                failure = failures[min(failures)]
    except BaseException:
        # An interrupt of the caller (KeyboardInterrupt, a timeout, an early
        # close...): stop what is out. Never read at all, the first window
        # runs on unwaited (as an unread `Executor.map`'s jobs do).
        if not abandoned:
            with cond:
                pending = list(out.values())
            for future in pending:
                future.cancel()
        raise
    finally:
        if not abandoned:
            with cond:
                while out:
                    _wait(run, None)
        run.progress.close()
        settle()  # the items' lines before what the caller prints next
    if failure is not None:
        raise failure


def _wait(run: _Run, deadline: float | None) -> None:
    """Wait (holding `run.cond`) for a batch, through the engine's wait hook."""
    if deadline is None:
        with blocking():
            run.wait()
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise futures.TimeoutError()
    with blocking():
        run.wait(left)


def fanout_iter(
    engine: Engine,
    target: Target,
    options: JobOptions,
    items: Iterable[Any],
    *,
    single: bool = False,
    kwargs: Mapping[str, Any] | None = None,
    size: int | None = None,
    ahead: int | None = None,
    timeout: float | None = None,
    send: SendBatch | None = None,
) -> Iterator[Any]:
    """Run `target` once per item on `engine`; its results, in input order,
    as their batches come back.

    As `fanout`, but streaming: the first window is sent before this
    returns, more is read and sent as the consumer takes results, and a
    result is not kept once yielded. `size` fixes the items per batch (None:
    `ChunkSizer`); `ahead` bounds the batches sent and not yet taken;
    `timeout` (seconds from this call) raises `TimeoutError` from the
    iterator and cancels what is out, as closing it early does; `send`
    replaces `engine.submit_batch` (same signature), e.g. to meter jobs.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    batches = _batches(
        engine, target, options, items, single, kwargs, size, ahead, deadline, send
    )
    next(batches)  # the first window goes out now
    return _items(batches)


def _items(batches: Generator[list[Any], None, None]) -> Iterator[Any]:
    try:
        for values in batches:
            values.reverse()
            while values:
                # Popped as yielded: no reference to a result stays here.
                yield values.pop()
    finally:
        batches.close()


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
    batches = _batches(
        engine, target, options, items, single, kwargs, None, None, None, None
    )
    results: list[Any] = []
    for values in batches:
        results.extend(values)
    return results
