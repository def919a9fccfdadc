"""`lucidity.Executor` against the thread-pool test engine (no daemons).

What the Executor itself does: the `max_workers` bound, the queue it keeps,
cancellation, `map`'s chunks, `buffersize`, timeout and order, `shutdown`.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import pytest
from engines.thread_engine import ThreadEngine

from lucidity import Executor, Job
from lucidity.engine import Engine


@pytest.fixture
def engine() -> Iterator[ThreadEngine]:
    eng = ThreadEngine(workers=8)
    try:
        yield eng
    finally:
        eng.close()


def test_the_thread_engine_is_an_engine(engine: ThreadEngine) -> None:
    assert isinstance(engine, Engine)


def test_submit_returns_a_job_with_args_and_kwargs(engine: ThreadEngine) -> None:
    with Executor(engine=engine) as ex:
        job = ex.submit(pow, 2, 10)
        assert isinstance(job, Job)
        assert job.result(10) == 1024
        assert ex.submit(int, "ff", base=16).result(10) == 255
        with pytest.raises(ZeroDivisionError):
            ex.submit(divmod, 1, 0).result(10)


def test_max_workers_bounds_the_jobs_in_flight(engine: ThreadEngine) -> None:
    engine.gate = threading.Event()
    with Executor(max_workers=3, engine=engine) as ex:
        jobs = [ex.submit(operator.add, i, 1) for i in range(10)]
        # Only 3 reached the engine; the rest wait in the executor.
        assert len(engine.submitted) == 3
        engine.gate.set()
        assert [j.result(10) for j in jobs] == list(range(1, 11))
    assert engine.peak <= 3
    assert len(engine.submitted) == 10


def test_a_queued_job_cancelled_never_runs(engine: ThreadEngine) -> None:
    engine.gate = threading.Event()
    ex = Executor(max_workers=1, engine=engine)
    first = ex.submit(operator.add, 1, 1)
    queued = ex.submit(operator.add, 2, 2)
    assert queued.cancel()
    engine.gate.set()
    assert first.result(10) == 2
    ex.shutdown(wait=True)
    assert queued.cancelled()
    assert len(engine.submitted) == 1


def test_cancelling_a_sent_job_cancels_it_in_the_engine(engine: ThreadEngine) -> None:
    engine.gate = threading.Event()
    ex = Executor(max_workers=2, engine=engine)
    sent = ex.submit(operator.add, 1, 1)
    assert sent.cancel()
    assert engine.cancelled, "the engine was not asked to cancel"
    engine.gate.set()
    ex.shutdown(wait=True)
    with pytest.raises(futures.CancelledError):
        sent.result(0)


def test_shutdown_cancel_futures_drops_the_queue(engine: ThreadEngine) -> None:
    engine.gate = threading.Event()
    ex = Executor(max_workers=1, engine=engine)
    jobs = [ex.submit(operator.add, i, 0) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(j.cancelled() for j in jobs[1:])
    engine.gate.set()
    assert jobs[0].result(10) == 0
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pow, 2, 2)


def test_map_chunks_order_and_failure(engine: ThreadEngine) -> None:
    with Executor(engine=engine) as ex:
        assert list(ex.map(pow, range(10), range(10), chunksize=4)) == [
            pow(i, i) for i in range(10)
        ]
        assert engine.batches == [4, 4, 2]
        it = ex.map(divmod, [1, 1, 1], [2, 0, 3], chunksize=3)
        assert next(it) == (0, 1)
        with pytest.raises(ZeroDivisionError):
            next(it)
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(pow, [1], [1], chunksize=0)
        with pytest.raises(ValueError, match="buffersize"):
            ex.map(pow, [1], [1], buffersize=0)


def test_map_buffersize_reads_the_input_lazily(engine: ThreadEngine) -> None:
    taken: list[int] = []

    def source() -> Iterator[int]:
        for i in range(1000):
            taken.append(i)
            yield i

    with Executor(engine=engine) as ex:
        it = ex.map(abs, source(), buffersize=2)
        assert len(taken) == 2
        assert next(it) == 0
        assert len(taken) == 3  # one more chunk sent per chunk taken
        it.close()


def test_map_timeout_counts_from_the_call(engine: ThreadEngine) -> None:
    with Executor(engine=engine) as ex:
        it = ex.map(time.sleep, [0, 1], timeout=0.2)
        assert next(it) is None
        started = time.monotonic()
        with pytest.raises(futures.TimeoutError):
            next(it)
        assert time.monotonic() - started < 0.9


def test_max_workers_must_be_positive(engine: ThreadEngine) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            Executor(max_workers=bad, engine=engine)


def test_a_job_cancelled_twice_says_so_twice() -> None:
    # As Future.cancel does; Job.cancel raised 'Future in unexpected state'.
    job: Job[int] = Job()
    assert job.cancel()
    assert job.cancel()
    assert job.cancelled()
