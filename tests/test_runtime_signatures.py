"""Jobs of every parameter kind, non-literal defaults and `async def` jobs, run
for real through all five generated variants (a control, two nodes of one
worker each: `rt_cluster`), from `tests/apps/lucidity_rtapp/signatures.py`."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from lucidity import _stubs
from lucidity.cluster.client import get_client
from lucidity.cluster.wire import protocol as p

WAIT_S = 30.0


@pytest.fixture
def sig(rt_client: Any) -> Any:
    """The generated stubs of the signatures module, on `rt_client`'s cluster."""
    from lucidity_rtapp import signatures_jobs

    return signatures_jobs


@pytest.fixture
def src(rt_client: Any) -> Any:
    from lucidity_rtapp import signatures

    return signatures


def single_calls(sig: Any, name: str) -> list[Callable[..., Any]]:
    """The four single-call variants of `name`, each as a blocking call."""

    def waited(stub: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *a, **k: stub(*a, **k).await_get(timeout=WAIT_S)

    return [
        getattr(sig, f"{name}_local"),
        getattr(sig, f"{name}_remote"),
        waited(getattr(sig, f"{name}_local_async")),
        waited(getattr(sig, f"{name}_remote_async")),
    ]


def test_keyword_only(sig: Any) -> None:
    for call in single_calls(sig, "keyword_only"):
        assert call(3, offset=1) == 7
        assert call(3, scale=10, offset=1) == 31
    # The fanout's keywords apply to every item.
    assert sig.keyword_only_remote_fanout([1, 2, 3], offset=5) == [7, 9, 11]
    assert sig.keyword_only_remote_fanout(range(3), scale=3, offset=0) == [0, 3, 6]


def test_var_positional(sig: Any) -> None:
    for call in single_calls(sig, "var_positional"):
        assert call(1) == (1,)
        assert call(1, 2, 3) == (1, 2, 3)
        assert call(*range(5)) == (0, 1, 2, 3, 4)
    # Items of any length.
    assert sig.var_positional_remote_fanout([(1,), (1, 2), (3, 4, 5)]) == [
        (1,),
        (1, 2),
        (3, 4, 5),
    ]


def test_var_keyword(sig: Any) -> None:
    for call in single_calls(sig, "var_keyword"):
        assert call("a") == {"name": "a"}
        assert call("a", x=1, y=2) == {"name": "a", "x": 1, "y": 2}
        assert call(name="b", z=3) == {"name": "b", "z": 3}
    assert sig.var_keyword_remote_fanout(["a", "b"], k=1) == [
        {"name": "a", "k": 1},
        {"name": "b", "k": 1},
    ]


def test_positional_only(sig: Any) -> None:
    for call in single_calls(sig, "positional_only"):
        assert call(10) == 7
        assert call(10, 4) == 6
        with pytest.raises(TypeError):
            call(a=10)  # as the function itself refuses it, here
    assert sig.positional_only_remote_fanout([(10,), (10, 1)]) == [7, 9]


def test_the_functions_own_defaults_apply_where_it_runs(sig: Any, src: Any) -> None:
    for call in single_calls(sig, "own_defaults"):
        a, pid, worker_pid, q, label, seen = call(1)
        # `pid` defaults to the pid of the process that imported the module:
        # the worker's, not this one's (the stubs never import it).
        assert pid == worker_pid != os.getpid()
        assert (a, q, label, seen) == (1, src.Point(0.0, 0.0), "x", [])
        # Given after one left at its default: sent by keyword.
        a, pid, worker_pid, q, label, seen = call(2, q=src.Point(3.0, 4.0))
        assert pid == worker_pid and q == src.Point(3.0, 4.0)
        assert call(3, 99, label="y")[:2] == (3, 99)
        assert call(3, 99, label="y")[4] == "y"
    results = sig.own_defaults_remote_fanout([(1,), (2, 7)], label="z")
    assert [r[1] == r[2] for r in results] == [True, False]
    assert [(r[0], r[4]) for r in results] == [(1, "z"), (2, "z")]
    assert results[1][1] == 7


def test_a_fanout_with_shared_keyword_arguments(sig: Any, src: Any) -> None:
    p1, p2, q2 = src.Point(3.0, 4.0), src.Point(1.0, 1.0), src.Point(4.0, 5.0)
    assert sig.distance_remote_fanout([(p1,), (p2, q2)], scale=2.0) == [10.0, 10.0]
    assert sig.distance_remote_fanout([(p1,)]) == [5.0]


def test_async_def_jobs_through_all_variants(sig: Any) -> None:
    for call in single_calls(sig, "async_square"):
        assert call(7) == 49
        assert call(3, delay=0.01) == 9
    assert sig.async_square_remote_fanout(range(5), delay=0.0) == [0, 1, 4, 9, 16]


def test_an_async_job_nested_under_a_def_job_on_one_worker_nodes(
    sig: Any, bounded: Any
) -> None:
    # sync_parent waits on async_children, which awaits its children, all on
    # one node of one worker: each wait lends the slot out, else it hangs.
    outer_pid, (inner_pid, values) = bounded(lambda: sig.sync_parent_remote(4), WAIT_S)
    assert values == [0, 1, 4, 9]
    assert outer_pid != inner_pid
    job = sig.sync_parent_remote_async(3)
    assert bounded(lambda: job.await_get(timeout=WAIT_S), WAIT_S)[1][1] == [0, 1, 4]


def test_a_positional_call_is_sent_as_before_and_keywords_under_a_flag(
    rt_client: Any,
) -> None:
    """The hot path's bytes: a positional call's payload is its arguments'
    pickle and its header has no "kw"; keywords add the flag, and only then."""
    client = get_client()
    ref: _stubs.JobRef[int] = _stubs.JobRef("lucidity_rtapp.signatures:keyword_only")
    _, frames, _ = client._new_job(ref.target, ref.options, (3,))
    assert "kw" not in p.decode(frames[0]).header
    assert bytes(frames[1]) == pickle.dumps((3,), protocol=5)
    _, frames, _ = client._new_job(ref.target, ref.options, (3,), None, {})
    assert "kw" not in p.decode(frames[0]).header  # an empty dict is no keywords
    _, frames, _ = client._new_job(ref.target, ref.options, (3,), None, {"offset": 1})
    assert p.decode(frames[0]).header["kw"] == 1
    assert pickle.loads(bytes(frames[1])) == ((3,), {"offset": 1})


def test_an_async_jobs_fuel_holds_as_a_def_jobs_does(sig: Any, bounded: Any) -> None:
    from lucidity.errors import FuelExhaustedError

    assert bounded(lambda: sig.async_spin_remote(0.01), WAIT_S) > 0
    with pytest.raises(FuelExhaustedError):
        bounded(lambda: sig.async_spin_remote(5.0), WAIT_S)
    assert sig.async_square_remote(4) == 16  # the nodes carry on
