"""The node's queue policy: who may start while workers are blocked on
child jobs (unit tests of `lucidity.cluster.node.scheduler.JobQueue`; the integration tests of
nested jobs are in test_runtime_variants and test_chaos)."""

from __future__ import annotations

import pytest

from lucidity.cluster.node.scheduler import LEND_PER_SLOT, Task
from lucidity.cluster.node.scheduler import JobQueue as _Queue


def task(depth: int, key: int = 0) -> Task:
    return Task(b"c", key, {"target": "m:f"}, [], depth)


def test_deepest_first_then_fifo() -> None:
    q = _Queue()
    for key, depth in enumerate([0, 1, 0, 2, 1]):
        q.append(task(depth, key))
    order = []
    while len(q):
        t = q.next_eligible(slots=1, running=0, blocked_depths=[])
        assert t is not None
        q.remove(t)
        order.append((t.depth, t.job_id))
    assert order == [(2, 3), (1, 1), (1, 4), (0, 0), (0, 2)]


def test_a_busy_slot_starts_nothing() -> None:
    q = _Queue()
    q.append(task(5))
    assert q.next_eligible(slots=1, running=1, blocked_depths=[]) is None
    assert q.next_eligible(slots=2, running=1, blocked_depths=[]) is not None


def test_blocked_jobs_lend_to_deeper_jobs_without_limit() -> None:
    q = _Queue()
    q.append(task(1))
    blocked = [0] * 50  # fifty blocked parents of depth 0
    assert q.next_eligible(slots=1, running=0, blocked_depths=blocked) is not None


def test_blocked_jobs_lend_to_their_own_depth_only_up_to_a_bound() -> None:
    q = _Queue()
    q.append(task(0))
    slots = 2
    bound = slots + LEND_PER_SLOT * slots  # parents in progress at most
    for blocked in range(bound):
        assert q.next_eligible(slots, 0, [0] * blocked) is not None, blocked
    assert q.next_eligible(slots, 0, [0] * bound) is None
    # ...and blocked deeper jobs count against shallower ones too.
    assert q.next_eligible(slots, 0, [3] * bound) is None


def test_remove_of_a_job_not_queued_is_a_value_error() -> None:
    q = _Queue()
    q.append(task(0, 1))
    with pytest.raises(ValueError):
        q.remove(task(0, 2))
    with pytest.raises(ValueError):
        q.remove(task(4, 3))
    assert len(q) == 1
