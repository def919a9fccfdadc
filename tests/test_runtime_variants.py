"""The five generated variants against a real cluster (a control, two nodes of
one worker each), through the module `lucidity-gen` wrote for the test app."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import lucidity
from lucidity import _stubs
from lucidity.cluster.client import get_client
from lucidity.errors import RemoteTraceback, WorkerLostError

WAIT_S = 20.0


# ---- the five variants ------------------------------------------------------


def test_remote_runs_and_returns(app: Any) -> None:
    assert app.square_remote(7) == 49


def test_remote_async_returns_a_job_at_once(app: Any) -> None:
    job = app.square_remote_async(8)
    assert isinstance(job, lucidity.Job)
    assert isinstance(job, concurrent.futures.Future)
    assert job.await_get(timeout=WAIT_S) == 64


def test_remote_fanout_of_tuples(app: Any) -> None:
    pairs = [(3, 4), (5, 12), (8, 15)]
    assert app.pythagorean_remote_fanout(pairs) == [5.0, 13.0, 17.0]


def test_remote_fanout_of_bare_values(app: Any) -> None:
    assert app.square_remote_fanout(range(20)) == [i * i for i in range(20)]
    assert app.square_remote_fanout(iter([3])) == [9]
    assert app.square_remote_fanout([]) == []


def test_fanout_of_one_tuple_parameter_passes_the_tuple_whole(app: Any) -> None:
    assert app.first_remote_fanout([(1, 2), (3, 4)]) == [1, 3]


def test_local_runs_on_this_process_own_node(
    app: Any, rt_client: Any, procs: Any
) -> None:
    assert app.square_local(6) == 36
    tag, pid, ppid, node_id = app.where_local(1)
    assert tag == 1
    assert pid != os.getpid() and ppid != os.getpid()
    # A private node of this process (not a cluster node) runs the worker.
    assert ppid not in rt_client.pids
    assert procs.stat(ppid)[1] == os.getpid()
    assert node_id not in rt_client.node_ids.values()


def test_local_async(app: Any) -> None:
    job = app.square_local_async(9)
    assert isinstance(job, lucidity.Job)
    assert job.await_get(timeout=WAIT_S) == 81
    assert app.pythagorean_local(3, 4) == 5.0  # nested from a local job


# ---- where jobs run ---------------------------------------------------------


def test_jobs_run_in_worker_processes_of_the_nodes(app: Any, rt_client: Any) -> None:
    tag, pid, ppid, node_id = app.where_remote(5)
    assert tag == 5
    assert pid != os.getpid()
    assert pid not in rt_client.pids  # not a daemon
    assert ppid in rt_client.node_pids  # a worker of a node
    assert node_id in rt_client.node_ids.values()


def test_roundrobin_fanout_reaches_both_nodes_evenly(app: Any, rt_client: Any) -> None:
    rows = app.where_remote_fanout(range(10))
    assert [r[0] for r in rows] == list(range(10))
    counts = Counter(r[3] for r in rows)
    assert set(counts) == set(rt_client.node_ids.values())
    assert sorted(counts.values()) == [5, 5]
    # Round-robin: neighbours go to different nodes.
    assert all(a[3] != b[3] for a, b in zip(rows, rows[1:], strict=False))
    # Each node's worker pid is its own.
    pids = {r[3]: set() for r in rows}
    for r in rows:
        pids[r[3]].add(r[2])
    assert not set.intersection(*pids.values())


def test_random_fanout_places_at_random(
    app: Any, rt_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One item per message, or chunking alone would break the alternation of
    # a strict round-robin: each item's node is then a placement of its own.
    from lucidity import chunks

    monkeypatch.setattr(chunks, "CHUNK_MIN_ITEMS", 10**9)
    client = get_client()
    sizes: list[int] = []
    real = client.submit

    def spy(target: str, options: Any, args: Any, **kw: Any) -> Any:
        sizes.append(len(args) if kw.get("batch") else 1)
        return real(target, options, args, **kw)

    monkeypatch.setattr(client, "submit", spy)
    rows = app.where_random_remote_fanout(range(40))
    assert sizes == [1] * 40
    assert [r[0] for r in rows] == list(range(40))
    ids = [r[3] for r in rows]
    assert set(ids) == set(rt_client.node_ids.values())  # 2**-39 to fail by chance
    alternating = all(a != b for a, b in zip(ids, ids[1:], strict=False))
    assert not alternating  # 2**-39 to fail by chance


def test_fanout_keeps_input_order_with_varied_run_times(app: Any) -> None:
    items = [(i, ((i * 7) % 5) * 0.002) for i in range(300)]
    assert app.echo_after_remote_fanout(items) == list(range(300))


# ---- Job is a Future --------------------------------------------------------


def test_job_works_with_concurrent_futures(app: Any) -> None:
    jobs = [app.square_remote_async(i) for i in range(8)]
    done, not_done = concurrent.futures.wait(jobs, timeout=WAIT_S)
    assert not not_done
    assert sorted(j.result() for j in done) == [i * i for i in range(8)]
    jobs = [app.echo_after_remote_async(i, 0.01 * i) for i in range(4)]
    seen = [j.result() for j in concurrent.futures.as_completed(jobs, timeout=WAIT_S)]
    assert sorted(seen) == [0, 1, 2, 3]


def test_try_get_is_none_until_done_then_the_value(app: Any) -> None:
    job = app.sleep_remote_async(0.3)
    assert job.try_get() is None
    assert not job.done()
    with pytest.raises(concurrent.futures.TimeoutError):
        job.await_get(timeout=0.01)
    assert job.await_get(timeout=WAIT_S) == 0.3
    assert job.done()
    assert job.try_get() == 0.3


def test_try_get_raises_the_job_error_once_done(app: Any, work: Any) -> None:
    job = app.fail_remote_async("late")
    concurrent.futures.wait([job], timeout=WAIT_S)
    with pytest.raises(work.AppError, match="late"):
        job.try_get()


def test_await_job_in_asyncio(app: Any) -> None:
    async def main() -> tuple[int, list[float]]:
        one = await asyncio.wait_for(app.square_remote_async(11), WAIT_S)
        many = await asyncio.wait_for(
            asyncio.gather(*(app.sleep_remote_async(0.05) for _ in range(4))),
            WAIT_S,
        )
        return one, many

    assert asyncio.run(main()) == (121, [0.05] * 4)


def test_finished_job_is_seen_at_once(app: Any) -> None:
    assert app.square_remote_async(2).await_get(timeout=WAIT_S) == 4
    # Waiting is event-driven: a short job's round trip is far below a
    # polling period (the median resists a loaded machine's outliers).
    times = []
    for i in range(21):
        start = time.monotonic()
        assert app.square_remote(i) == i * i
        times.append(time.monotonic() - start)
    assert statistics.median(times) < 0.05, times


# ---- nesting (nodes of ONE worker each) -------------------------------------


def test_nested_fanout_does_not_deadlock_one_worker_nodes(
    app: Any, bounded: Any
) -> None:
    pairs = [(a, a + 1) for a in range(1, 11)]
    want = [((a * a + (a + 1) ** 2) ** 0.5) for a, _ in pairs]
    got = bounded(lambda: app.pythagorean_remote_fanout(pairs), WAIT_S)
    assert got == pytest.approx(want)


def test_nested_async_jobs_finish(app: Any) -> None:
    jobs = [app.pythagorean_remote_async(3 * k, 4 * k) for k in range(1, 7)]
    done, not_done = concurrent.futures.wait(jobs, timeout=WAIT_S)
    assert not not_done
    assert [j.result() for j in jobs] == [5.0 * k for k in range(1, 7)]


def test_three_levels_deep(app: Any, bounded: Any) -> None:
    # nested_sum (job) -> sum_of_squares_remote (job) -> square fanout (jobs)
    assert bounded(lambda: app.nested_sum_remote(12), WAIT_S) == (12, 506)
    got = bounded(lambda: app.nested_sum_remote_fanout([3, 4, 5, 6]), WAIT_S)
    assert got == [(3, 5), (4, 14), (5, 30), (6, 55)]


def test_many_nested_jobs_at_once_keep_the_workers_bounded(
    app: Any, rt_client: Any, procs: Any
) -> None:
    # 300 parents at once, each blocked on 2 children: a blocked parent lends
    # its slot to its children and to at most LEND_PER_SLOT (3) more parents
    # per slot, so a one-slot node has at most 4 parents and a running child
    # at once (and one worker being replaced), not hundreds of processes.
    jobs = [app.pythagorean_remote_async(3 * k, 4 * k) for k in range(1, 301)]
    peak = 0
    deadline = time.monotonic() + WAIT_S
    while not all(job.done() for job in jobs) and time.monotonic() < deadline:
        peak = max(peak, *(len(procs.children(pid)) for pid in rt_client.node_pids))
        time.sleep(0.01)
    assert [job.await_get(timeout=1) for job in jobs] == [
        5.0 * k for k in range(1, 301)
    ]
    assert 1 <= peak <= 6


# ---- errors -----------------------------------------------------------------


def test_exception_keeps_type_message_and_remote_traceback(
    app: Any, work: Any, rt_client: Any
) -> None:
    with pytest.raises(work.AppError) as info:
        app.fail_remote("boom")
    exc = info.value
    assert type(exc) is work.AppError
    assert str(exc) == "boom"
    cause = exc.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "Traceback (most recent call last)" in cause.text
    assert "raise AppError(message)" in cause.text
    assert "AppError: boom" in cause.text
    assert any(node_id in cause.text for node_id in rt_client.node_ids.values())


def test_exception_of_async_job_and_local(app: Any, work: Any) -> None:
    job = app.fail_remote_async("async boom")
    with pytest.raises(work.AppError, match="async boom"):
        job.await_get(timeout=WAIT_S)
    assert isinstance(job.exception(), work.AppError)
    with pytest.raises(work.AppError, match="local boom"):
        app.fail_local("local boom")


def test_unpicklable_exception_becomes_remote_error(app: Any, rt_client: Any) -> None:
    with pytest.raises(lucidity.RemoteError) as info:
        app.fail_unpicklable_remote("cannot travel")
    exc = info.value
    assert exc.ename == "lucidity_rtapp.work.UnpicklableError"
    assert exc.evalue == "cannot travel"
    assert "raise UnpicklableError(message)" in exc.traceback
    assert exc.node in rt_client.node_ids.values()
    assert "UnpicklableError" in str(exc) and exc.node in str(exc)


def test_fanout_failure_is_raised_after_the_other_items_finish(
    app: Any, work: Any, tmp_path: Path
) -> None:
    # The last item fails at once; the others sleep first, then leave a marker
    # file. (Last: the runtime stops submitting items after a failure, see
    # the xfail test below.)
    items = [(str(tmp_path), i, 9, 0.1) for i in range(10)]
    with pytest.raises(work.AppError, match="item 9 failed"):
        app.mark_remote_fanout(items)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"done-{i}" for i in range(9)
    )


def test_fanout_cancels_the_rest_after_a_failure(
    app: Any, work: Any, tmp_path: Path
) -> None:
    # More items than the in-flight window (8 per worker slot): item 0 fails
    # at once, while most items are still waiting for the window. Those are
    # cancelled (never submitted); the ones already out finish before the raise.
    items = [(str(tmp_path), i, 0, 0.02) for i in range(60)]
    with pytest.raises(work.AppError, match="item 0 failed"):
        app.mark_remote_fanout(items)
    ran = len(list(tmp_path.iterdir()))
    assert ran < 59
    time.sleep(0.3)  # anything still running would write its marker now
    assert len(list(tmp_path.iterdir())) == ran


def test_fanout_raises_the_first_failure_in_input_order(
    app: Any, work: Any, tmp_path: Path
) -> None:
    items = [(str(tmp_path), i, 3, 0.0) for i in range(6)]
    items[5] = (str(tmp_path), 5, 5, 0.0)  # also fails, but later in the input
    with pytest.raises(work.AppError, match="item 3 failed"):
        app.mark_remote_fanout(items)


def test_dead_worker_is_an_error_and_is_replaced(app: Any, rt_client: Any) -> None:
    with pytest.raises(WorkerLostError, match="exited with 3") as info:
        app.die_remote(3)
    assert "lucidity_rtapp.work:die" in str(info.value)
    # Both nodes (one of which just lost its only worker) still run jobs.
    rows = app.where_remote_fanout(range(6))
    assert {r[3] for r in rows} == set(rt_client.node_ids.values())


# ---- cancel -----------------------------------------------------------------


def test_cancel_a_queued_job(rt_client: Any, tmp_path: Path) -> None:
    client = get_client()
    node = rt_client.nodes[0]
    sleep = _stubs.JobRef("lucidity_rtapp.work:sleep")
    mark = _stubs.JobRef("lucidity_rtapp.work:mark")
    busy = client.submit(sleep.target, sleep.options, (0.5,), addr=node)
    queued = client.submit(
        mark.target, mark.options, (str(tmp_path), 1, -1, 0.0), addr=node
    )
    assert queued.cancel()
    assert queued.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.await_get(timeout=1)
    # The node runs its queue in order: once this one is done, the cancelled
    # job would have run if the node had not dropped it.
    after = client.submit(
        mark.target, mark.options, (str(tmp_path), 2, -1, 0.0), addr=node
    )
    assert busy.await_get(timeout=WAIT_S) == 0.5
    assert after.await_get(timeout=WAIT_S) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done-2"]


def test_cancel_a_running_job_stops_its_worker(
    rt_client: Any, procs: Any, tmp_path: Path
) -> None:
    client = get_client()
    node = rt_client.nodes[1]
    ref = _stubs.JobRef("lucidity_rtapp.work:announce_then_sleep")
    flag = tmp_path / "pid"
    job = client.submit(ref.target, ref.options, (str(flag), 60.0), addr=node)
    deadline = time.monotonic() + WAIT_S
    while not (flag.exists() and flag.read_text()):
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.01)
    worker_pid = int(flag.read_text())
    assert job.cancel()
    assert procs.wait_gone([worker_pid], 10) == []
    where = _stubs.JobRef("lucidity_rtapp.work:where")
    after = client.submit(where.target, where.options, (1,), addr=node)
    tag, pid, ppid, _ = after.await_get(timeout=WAIT_S)
    assert pid != worker_pid and ppid == rt_client.node_pids[1]


def test_cancel_after_done_is_refused(app: Any) -> None:
    job = app.square_remote_async(3)
    assert job.await_get(timeout=WAIT_S) == 9
    assert not job.cancel()
    assert job.result() == 9
