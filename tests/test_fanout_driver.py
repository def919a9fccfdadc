"""The fanout driver (`lucidity.fanout`) against the thread-pool test engine.

What the driver itself does, on any engine: input order, the first failure
in input order, the in-flight window per slot, a lazy input read as results
come back, batches that grow with the measured cost of an item, and a failed
submission (or input) that lets what is already out finish. The engine is
`tests/engines/thread_engine.py`: one module written against `Engine`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from engines.thread_engine import ThreadEngine

from lucidity import JobOptions
from lucidity.engine import BatchResult, Target
from lucidity.errors import ClusterError
from lucidity.fanout import FANOUT_WINDOW_PER_SLOT, fanout, fanout_iter

OPTIONS = JobOptions()
WAIT_S = 10.0


@pytest.fixture
def engine() -> Iterator[ThreadEngine]:
    eng = ThreadEngine(workers=4)
    try:
        yield eng
    finally:
        eng.close()


def square(x: int) -> int:
    return x * x


def late(x: int, delay: float) -> int:
    time.sleep(delay)
    return x


class Odd(Exception):
    pass


def fail_some(x: int, delay: float, bad: bool) -> int:
    time.sleep(delay)
    if bad:
        raise Odd(f"item {x}")
    return x


def in_thread(fn: Any) -> Future[Any]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def wait_until(cond: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():  # a test's own wait, on state the driver cannot signal
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_results_come_back_in_input_order(engine: ThreadEngine) -> None:
    # Later items finish first: the order is the input's, not completion's.
    items = [(i, 0.05 * (5 - i)) for i in range(6)]
    assert fanout(engine, late, OPTIONS, items) == list(range(6))


def test_single_items_travel_as_they_are(engine: ThreadEngine) -> None:
    assert fanout(engine, square, OPTIONS, range(10), single=True) == [
        i * i for i in range(10)
    ]


def test_the_first_failure_in_input_order_is_raised(engine: ThreadEngine) -> None:
    # Item 4 fails at once, item 1 later: item 1's failure is the one raised.
    items = [(i, 0.3 if i == 1 else 0.0, i in (1, 4)) for i in range(6)]
    with pytest.raises(Odd, match="item 1"):
        fanout(engine, fail_some, OPTIONS, items)


def test_batches_in_flight_are_bounded_per_slot(engine: ThreadEngine) -> None:
    engine.gate = threading.Event()
    consumed = 0

    def items() -> Iterator[int]:
        nonlocal consumed
        for i in range(100):
            consumed += 1
            yield i

    window = FANOUT_WINDOW_PER_SLOT * engine.workers
    result = in_thread(lambda: fanout(engine, square, OPTIONS, items(), single=True))
    wait_until(lambda: len(engine.batches) >= window, "a full window")
    time.sleep(0.2)  # room for a (wrong) batch past the window
    assert len(engine.batches) == window
    # A lazy input is read only as far as what is sent.
    assert consumed == window
    engine.gate.set()
    assert result.result(WAIT_S) == [i * i for i in range(100)]
    assert consumed == 100


def test_batches_grow_with_the_measured_cost_of_an_item(
    engine: ThreadEngine,
) -> None:
    def items() -> Iterator[tuple[int]]:
        yield from ((i,) for i in range(5000))

    assert fanout(engine, square, OPTIONS, items()) == [i * i for i in range(5000)]
    assert engine.batches[0] == 1  # nothing known yet: one item
    assert max(engine.batches) > 100  # not 5,000 batches
    assert sum(engine.batches) == 5000


class FailingEngine(ThreadEngine):
    """Its `fail_at`-th batch submission raises `error`."""

    def __init__(self, fail_at: int, error: BaseException) -> None:
        super().__init__(workers=4)
        self.fail_at = fail_at
        self.error = error
        self.calls = 0

    def submit_batch(
        self,
        target: Target,
        options: JobOptions,
        items: Sequence[Any],
        kwargs: Mapping[str, Any] | None = None,
        *,
        node: str | None = None,
        single: bool = False,
    ) -> Future[BatchResult]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        return super().submit_batch(
            target, options, items, kwargs, node=node, single=single
        )


def test_a_failed_submission_lets_the_batches_out_finish() -> None:
    engine = FailingEngine(3, ClusterError("cannot send batch 3"))
    finished: list[int] = []

    def slow(x: int) -> int:
        time.sleep(0.3)
        finished.append(x)
        return x

    try:
        with pytest.raises(ClusterError, match="cannot send batch 3"):
            fanout(engine, slow, OPTIONS, range(10), single=True)
        # The two batches already out were not cancelled, and ran to the end
        # before the fanout raised.
        assert engine.cancelled == []
        assert sorted(finished) == [0, 1]
    finally:
        engine.close()


def test_a_failing_input_lets_the_batches_out_finish(engine: ThreadEngine) -> None:
    finished: list[int] = []

    def slow(x: int) -> int:
        time.sleep(0.3)
        finished.append(x)
        return x

    def items() -> Iterator[int]:
        yield 0
        yield 1
        raise ValueError("the input broke at item 2")

    with pytest.raises(ValueError, match="the input broke at item 2"):
        fanout(engine, slow, OPTIONS, items(), single=True)
    assert engine.cancelled == []
    assert sorted(finished) == [0, 1]


def test_an_earlier_failure_still_wins_over_a_failed_submission() -> None:
    engine = FailingEngine(3, ClusterError("cannot send batch 3"))
    try:
        items = [(i, 0.2, i == 1) for i in range(10)]
        with pytest.raises(Odd, match="item 1"):
            fanout(engine, fail_some, OPTIONS, items)
    finally:
        engine.close()


def test_an_interrupt_cancels_the_batches_out() -> None:
    engine = FailingEngine(3, KeyboardInterrupt())
    engine.gate = threading.Event()
    try:
        with pytest.raises(KeyboardInterrupt):
            fanout(engine, square, OPTIONS, range(10), single=True)
        assert len(engine.cancelled) == 2
    finally:
        engine.close()


# ---- the streaming form (fanout_iter) ----------------------------------------


def test_the_stream_yields_in_input_order(engine: ThreadEngine) -> None:
    items = [(i, 0.05 * (5 - i)) for i in range(6)]
    assert list(fanout_iter(engine, late, OPTIONS, items)) == list(range(6))


def test_the_stream_raises_the_first_failure_at_its_place(
    engine: ThreadEngine,
) -> None:
    # Item 4 fails at once, item 2 later: 0 and 1 come out, then item 2's.
    items = [(i, 0.3 if i == 2 else 0.0, i in (2, 4)) for i in range(6)]
    it = fanout_iter(engine, fail_some, OPTIONS, items, size=1)
    assert next(it) == 0
    assert next(it) == 1
    with pytest.raises(Odd, match="item 2"):
        next(it)


def test_the_stream_reads_its_input_only_as_the_window_allows(
    engine: ThreadEngine,
) -> None:
    taken: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1000):
            taken.append(i)
            yield i

    it = fanout_iter(engine, square, OPTIONS, items(), single=True, size=5, ahead=3)
    assert len(taken) == 15  # three batches of five, sent at the call
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert len(taken) <= 20  # the batch taken frees room for one more
    it.close()
    assert len(taken) <= 20


def test_closing_the_stream_early_cancels_what_is_out(engine: ThreadEngine) -> None:
    items = [(i, 0.0 if i == 0 else 1.0) for i in range(100)]
    it = fanout_iter(engine, late, OPTIONS, items, size=1)
    # The window, and the one item 0 freed at once.
    assert len(engine.batches) <= FANOUT_WINDOW_PER_SLOT * engine.workers + 1
    assert next(it) == 0
    started = time.monotonic()
    it.close()
    assert time.monotonic() - started < 0.9  # not a wait for what was out
    assert engine.cancelled, "nothing out was cancelled"
    assert len(engine.batches) < 100


def test_the_stream_times_out_from_its_call(engine: ThreadEngine) -> None:
    it = fanout_iter(engine, late, OPTIONS, [(0, 0.0), (1, 5.0)], size=1, timeout=0.3)
    assert next(it) == 0
    started = time.monotonic()
    # futures.TimeoutError: the builtin one only from 3.11 on
    with pytest.raises(futures.TimeoutError):
        next(it)
    assert time.monotonic() - started < 3.0


def test_a_batch_result_the_driver_cannot_read_fails_the_fanout_not_hangs(
    engine: ThreadEngine,
) -> None:
    # A done callback's exception is only logged by the future: the driver
    # must turn it into the fanout's failure and wake its caller.
    real = engine.submit_batch

    def broken(*args: Any, **kwargs: Any) -> Future[BatchResult]:
        out: Future[BatchResult] = Future()
        inner = real(*args, **kwargs)
        # `values` of None: reading the batch raises in the driver's callback.
        inner.add_done_callback(
            lambda f: out.set_result(BatchResult(None, None, 0.0, "x"))  # type: ignore[arg-type]
        )
        return out

    engine.submit_batch = broken  # type: ignore[method-assign]
    run = in_thread(lambda: fanout(engine, square, OPTIONS, [(i,) for i in range(20)]))
    with pytest.raises(TypeError, match="NoneType"):
        run.result(WAIT_S)


def test_the_zmq_batch_of_a_job_whose_outcome_cannot_be_read_fails() -> None:
    from lucidity.cluster.client.engine import _many, _settled

    job: Future[Any] = Future()
    out: Future[BatchResult] = Future()
    job.set_result(("not", "a batch"))  # unpacking it raises ValueError
    _settled(_many)(job, out)
    assert isinstance(out.exception(0), ValueError)
