"""A long fanout's progress bar on the caller's terminal.

A fanout that has run for more than DELAY_S shows a tqdm bar on stderr
(`tqdm.auto`: a widget in a notebook): items done, of how many when the
input has a length, the rate and the time left. Nothing is shown when
stderr is not a terminal (a log, a pipe, a worker's nested fanout), unless
`LUCIDITY_PROGRESS=1`; `LUCIDITY_PROGRESS=0` never shows it.

The bar is drawn by a thread of its own from a count the fanout's
completions bump: neither the fanout's caller (which holds the fanout's
lock) nor the client's I/O thread (which completes the items) ever writes to
a terminal for it. A fanout that shows no bar starts no thread.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

__all__ = ["DELAY_S", "PROGRESS_ENV", "FanoutProgress", "wanted"]

PROGRESS_ENV = "LUCIDITY_PROGRESS"
DELAY_S = 1.0
# How often the bar is redrawn (tqdm also rate-limits its own output).
REFRESH_S = 0.2


def wanted() -> bool:
    """Whether a fanout started now may show a bar."""
    forced = os.environ.get(PROGRESS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if os.environ.get("LUCIDITY_NODE_ID"):
        return False  # a nested fanout: its stderr is its node's pipe
    if "ipykernel" in sys.modules:
        return True  # a notebook: tqdm.auto draws a widget
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _has_width() -> bool:
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        return size.columns > 0 and size.lines > 0
    except (AttributeError, OSError, ValueError):
        return False


class FanoutProgress:
    """The progress of one fanout: `done` is bumped as items finish (by any
    thread), `close` ends the bar."""

    __slots__ = ("done", "_stop", "_thread", "_desc", "_total")

    def __init__(self, target: str, total: int | None) -> None:
        self.done = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        if not wanted():
            return
        self._desc = target.rpartition(":")[2]
        self._total = total
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="lucidity-progress", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        assert self._stop is not None
        if self._stop.wait(DELAY_S):
            return  # over within a second: no bar
        # tqdm ships no type information (types-tqdm is not a dependency).
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        sized = _has_width()
        bar: Any = tqdm(
            total=self._total,
            desc=self._desc,
            unit="item",
            # Items done before the bar appeared are not in its rate.
            initial=self.done,
            file=sys.stderr,
            # Follow the terminal's size, if it has one (a bare pty says
            # 0 x 0: then tqdm would draw nothing).
            dynamic_ncols=sized,
            ncols=None if sized else 80,
            nrows=None if sized else 24,
        )
        try:
            while not self._stop.wait(REFRESH_S):
                bar.update(self.done - bar.n)
            bar.update(self.done - bar.n)
        finally:
            bar.close()

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
            assert self._thread is not None
            # Bounded: a terminal that does not take the last redraw must
            # not hold the fanout's result back.
            self._thread.join(timeout=1.0)
