"""How many items a fanout batch holds: `ChunkSizer` and its bounds.

The fanout driver (`lucidity.fanout`) asks `ChunkSizer.size` before each
batch and tells it `observe` as each comes back, from what the engine
reports (`BatchResult.elapsed_s`, `waited_s`). This module owns that
measurement and the limits on it; the driver owns the window, the order and
failures. Tests and users tune the sizing by these module constants.
"""

from __future__ import annotations

__all__ = [
    "CHUNK_MAX_ITEMS",
    "CHUNK_MIN_ITEMS",
    "CHUNK_TARGET_S",
    "CHUNK_WALL_MAX_S",
    "ChunkSizer",
]

# A batch is sized to run about this long where it runs: long enough that the
# cost of a message (~0.1-0.5 ms) is noise, short enough to balance nodes.
CHUNK_TARGET_S = 0.02
# ...and never more items than this in one batch; fewer than CHUNK_MIN_ITEMS
# go one per batch (a small fanout stays spread out).
CHUNK_MAX_ITEMS = 8192
CHUNK_MIN_ITEMS = 4
# Items that wait on nested jobs (their slot or CPU lent meanwhile) are
# sized by their own time, less the wait, but a batch of them still runs its
# items one after another: it is held to about this long where it runs (or
# CHUNK_TARGET_S, if longer).
CHUNK_WALL_MAX_S = 0.25


class ChunkSizer:
    """How many fanout items go in the next batch.

    Until a batch has come back nothing is known about the job's cost, so
    items go one per batch (a window of them: a slow job is spread over every
    node at once). Then batches are sized from the measured time per item, as
    the engine reports it, to take about CHUNK_TARGET_S of the items' own
    time: what they waited on nested jobs does not count (a nested parent's
    own work is its submissions), but a batch is held to CHUNK_WALL_MAX_S
    where it runs. When the number of items left is known, no batch takes
    more than its share of the tail.
    """

    __slots__ = ("per_item_s", "wall_per_item_s")

    def __init__(self) -> None:
        # Own time per item (elapsed less waited), and elapsed time per item.
        self.per_item_s: float | None = None
        self.wall_per_item_s = 0.0

    def observe(self, count: int, elapsed_s: float, waited_s: float = 0.0) -> None:
        if count <= 0:
            return
        own = max(elapsed_s - waited_s, 0.0) / count
        wall = elapsed_s / count
        last = self.per_item_s
        if last is None:
            self.per_item_s, self.wall_per_item_s = own, wall
        else:
            self.per_item_s = (last + own) / 2
            self.wall_per_item_s = (self.wall_per_item_s + wall) / 2

    def size(self, left: int | None, slots: int) -> int:
        if self.per_item_s is None:
            return 1
        size = int(CHUNK_TARGET_S / max(self.per_item_s, 1e-9))
        wall = max(CHUNK_WALL_MAX_S, CHUNK_TARGET_S)  # it binds waiting items only
        size = min(size, int(wall / max(self.wall_per_item_s, 1e-9)))
        if left is not None:
            size = min(size, -(-left // (2 * slots)))
        if size < CHUNK_MIN_ITEMS:
            return 1  # a batch of 2 or 3 saves little and costs the spread
        return min(size, CHUNK_MAX_ITEMS)
