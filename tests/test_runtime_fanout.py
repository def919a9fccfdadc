"""Fanout in chunks: many items per message, each with its own result or
error, limits per item; against a real cluster (two nodes of one worker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lucidity import chunks as sizing
from lucidity.chunks import ChunkSizer as _ChunkSizer
from lucidity.cluster.client import get_client
from lucidity.errors import FuelExhaustedError, RemoteTraceback


@pytest.fixture
def chunks(rt_client: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every message a fanout sends (1 for a one-item job)."""
    client = get_client()
    sizes: list[int] = []
    real = client.submit

    def spy(target: str, options: Any, args: Any, **kw: Any) -> Any:
        sizes.append(len(args) if kw.get("batch") else 1)
        return real(target, options, args, **kw)

    monkeypatch.setattr(client, "submit", spy)
    return sizes


def test_trivial_items_travel_many_per_message(app: Any, chunks: list[int]) -> None:
    consumed = 0

    def items() -> Iterator[int]:
        nonlocal consumed
        for i in range(20_000):
            consumed += 1
            yield i

    assert app.square_remote_fanout(items()) == [i * i for i in range(20_000)]
    assert consumed == 20_000 == sum(chunks)
    assert len(chunks) < 200  # not 20,000 messages
    assert max(chunks) >= 1000


def test_a_failure_inside_a_chunk_is_that_item_s_own(
    app: Any, chunks: list[int]
) -> None:
    from lucidity_rtapp.work import AppError

    with pytest.raises(AppError, match="item 3000 is the odd one out") as info:
        app.odd_one_out_remote_fanout(range(6000))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "odd_one_out" in str(info.value.__cause__)
    assert max(chunks) > 1  # it did fail inside a chunk of many


def test_fuel_is_a_budget_per_item_of_a_chunk(
    app: Any, chunks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long chunks: 8 items of 50 ms CPU share one message, 400 ms of CPU in
    # all, over the job's fuel of 2 (200 ms), yet each item is within it.
    monkeypatch.setattr(sizing, "CHUNK_TARGET_S", 10.0)
    items = [0.05] * 40
    assert all(n > 0 for n in app.spin_remote_fanout(items))
    assert max(chunks) * 0.05 > 0.2
    items[25] = 0.5  # this one item is past its budget
    with pytest.raises(FuelExhaustedError, match="fuel of 2"):
        app.spin_remote_fanout(items)
    assert app.spin_remote(0.01) > 0  # the worker was replaced


def test_items_that_wait_on_nested_jobs_share_a_chunk(
    app: Any, chunks: list[int]
) -> None:
    # A parent that only waits 20 ms on its child costs its node little of
    # its own: many share a message (Ray's nested rate is bound by its cost
    # per task). A job that sleeps 20 ms itself keeps one item per message.
    assert app.wait_on_sleep_remote_fanout([0.02] * 120) == [0.02] * 120
    assert max(chunks) >= sizing.CHUNK_MIN_ITEMS, chunks
    chunks.clear()
    assert app.sleep_remote_fanout([0.02] * 40) == [0.02] * 40
    assert set(chunks) == {1}, chunks


def test_a_chunk_of_waiting_items_is_held_to_its_wall_time() -> None:
    sizer = _ChunkSizer()
    # 10 ms an item, 9.5 of them waiting on nested jobs: sized by the 0.5 ms
    # of its own (40 items for 20 ms), held to CHUNK_WALL_MAX_S (25 items).
    sizer.observe(10, 0.1, 0.095)
    assert sizer.size(None, 2) == int(sizing.CHUNK_WALL_MAX_S / 0.01)
    alone = _ChunkSizer()
    alone.observe(10, 0.1, 0.0)  # the same 10 ms, its own: one per chunk
    assert alone.size(None, 2) == 1


def test_chunk_size_follows_the_measured_cost_of_an_item() -> None:
    sizer = _ChunkSizer()
    assert sizer.size(None, 2) == 1  # nothing known yet: one item per chunk
    sizer.observe(100, 0.001)  # 10 us per item
    target = int(sizing.CHUNK_TARGET_S / 1e-5)
    assert sizer.size(None, 2) == min(target, sizing.CHUNK_MAX_ITEMS)
    assert sizer.size(40, 2) == 10  # a share of the tail: left / (2 x slots)
    sizer.observe(2, 2.0)  # slow items now: chunks shrink to one
    assert sizer.size(None, 2) == 1
    fast = _ChunkSizer()
    fast.observe(10, 0.0)
    assert fast.size(10**9, 1) == sizing.CHUNK_MAX_ITEMS  # a bounded message
