"""Printing forwarded job output: the caller's side of `lucidity.cluster.node.output`.

Whoever prints job lines (a caller, or a node for its log) does it through a
`Printer`: a thread of its own writes them, so a slow terminal blocks
neither a client's I/O thread nor a node's loop. It holds at most
MAX_QUEUED lines and counts what it had to drop, and says so (at exit too,
for what it could not write). Identical lines from several jobs within
DEDUP_S are printed once, then with a count, as Ray does
(`LUCIDITY_DEDUP_OUTPUT=0` prints every one). In a worker the lines of
nested jobs are written at once instead, to the pipe its node reads.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import time
from typing import Any

__all__ = [
    "DEDUP_ENV",
    "MAX_QUEUED",
    "Printer",
    "prefix",
    "printer",
    "settle",
    "show_dropped",
    "show_output",
]

DEDUP_ENV = "LUCIDITY_DEDUP_OUTPUT"
# Lines a Printer holds before it drops (and counts) new ones.
MAX_QUEUED = 10_000
# Identical lines of other jobs within this window are counted, not printed.
DEDUP_S = 5.0
# Lines a Printer's thread takes from its queue at a time.
_BATCH = 500
# The prefix of the printer's own lines (drop counts).
_OWN = "(lucidity) "
_PREFIXED = re.compile(r"\(\S+ pid=\d+ node=\S+\) ")


def prefix(job: Any, pid: Any, node: Any) -> str:
    """What a job's line is shown after: where it ran."""
    return f"({job} pid={pid} node={node}) "


def _lines_in(item: tuple[str, bool, str]) -> int:
    """How many job lines a queued line stands for (a drop count: that many)."""
    if item[0] == _OWN:
        return int(item[2].split()[0])
    return 1


class Printer:
    """Writes lines to stdout/stderr from a thread of its own (started on
    first use): the thread that hands them over never waits on a terminal.

    With `sync`, lines are written by the caller of `put` instead: for a
    worker, whose stdout and stderr are pipes its node always reads.
    """

    def __init__(
        self,
        out: Any = None,
        err: Any = None,
        sync: bool = False,
        dedup: bool | None = None,
    ) -> None:
        # None: sys.stdout/sys.stderr as they are at each write (a test's
        # capture, a notebook's streams).
        self._out = out
        self._err = err
        self.sync = sync
        self.dedup = os.environ.get(DEDUP_ENV, "1") != "0" if dedup is None else dedup
        self._cond = threading.Condition()
        self._queue: list[tuple[str, bool, str]] = []
        self._dropped = 0
        # text -> [prefix it was printed with, when, how many more since]
        self._recent: dict[str, list[Any]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        # Exiting: stop writing, count what is left as dropped.
        self._abandon = False
        self._left = 0
        self.pid = os.getpid()
        # Lines ever queued or counted as dropped, and ever written or told
        # as dropped (or given up): `flush` waits for the one to reach the other.
        self.queued = 0
        self.written = 0

    def put(self, prefix: str, err: bool, lines: list[str], dropped: int = 0) -> None:
        if self.sync:
            with self._cond:
                if dropped:
                    self._write([self._drop_line(dropped)])
                self._write([(prefix, err, line) for line in lines])
            return
        with self._cond:
            self._dropped += dropped
            self.queued += len(lines) + dropped
            room = MAX_QUEUED - len(self._queue)
            if room < len(lines):
                self._dropped += len(lines) - max(room, 0)
                lines = lines[: max(room, 0)]
            self._queue.extend((prefix, err, line) for line in lines)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="lucidity-output", daemon=True
                )
                self._thread.start()
                atexit.register(self.close)
            self._cond.notify()

    @staticmethod
    def _drop_line(count: int) -> tuple[str, bool, str]:
        return (
            _OWN,
            True,
            f"{count} line(s) of job output dropped: the caller did not keep up",
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._dropped and not self._closed:
                    self._cond.wait(1.0 if self._recent else None)
                    if self._recent and not self._queue:
                        break
                # A slice at a time: a count of dropped lines is told soon.
                batch = self._queue[:_BATCH]
                del self._queue[:_BATCH]
                dropped, self._dropped = self._dropped, 0
                closing = self._closed
            taken = len(batch)
            if dropped:
                batch.append(self._drop_line(dropped))
            self._write(batch)
            with self._cond:
                self.written += taken + dropped
                self._cond.notify_all()
                if closing and not self._queue:
                    return

    def _write(self, batch: list[tuple[str, bool, str]]) -> None:
        now = time.monotonic()
        if self._recent:
            self._flush_repeats(now, False, batch)
        out = self._out or sys.stdout
        err = self._err or sys.stderr
        used = [False, False]  # stdout, stderr written to
        for index, (prefix, is_err, text) in enumerate(batch):
            if self._abandon:
                self._left += sum(_lines_in(item) for item in batch[index:])
                break
            shown = _PREFIXED.match(text)
            if shown is not None:  # a nested job's line, prefixed where it ran
                prefix, text = shown.group(0), text[shown.end() :]
            if self.dedup and prefix != _OWN:
                seen = self._recent.get(text)
                if seen is not None and seen[0] != prefix and now - seen[1] < DEDUP_S:
                    seen[2] += 1
                    continue
                if seen is None or now - seen[1] >= DEDUP_S:
                    if len(self._recent) > MAX_QUEUED:
                        self._flush_repeats(now, True, batch)
                    self._recent[text] = [prefix, now, 0, is_err]
            stream = err if is_err else out
            try:
                stream.write(f"{prefix}{text}\n")
            except (OSError, ValueError):
                continue  # a closed stream: nothing to tell
            used[is_err] = True
        for stream, wrote in zip((out, err), used, strict=True):
            if wrote:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass

    def _flush_repeats(
        self, now: float, everything: bool, batch: list[tuple[str, bool, str]]
    ) -> None:
        """Print the counts of repeated lines whose window has passed."""
        out = self._out or sys.stdout
        err = self._err or sys.stderr
        for text, (prefix, when, more, is_err) in list(self._recent.items()):
            if everything or now - when >= DEDUP_S:
                del self._recent[text]
                if more:
                    stream = err if is_err else out
                    try:
                        stream.write(
                            f"{prefix}{text} [repeated {more}x across cluster]\n"
                        )
                    except (OSError, ValueError):
                        pass

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until what is queued now has been written."""
        with self._cond:
            target = self.queued
            deadline = time.monotonic() + timeout
            while self.written < target and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def close(self) -> None:
        """Write what is queued (bounded wait) and the repeat counts; stop."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=2.0)
            if thread.is_alive():  # a terminal that does not keep up
                self._abandon = True
                thread.join(timeout=1.0)
        with self._cond:
            left = len(self._queue) + self._dropped + self._left
            self._queue.clear()
            self._dropped = self._left = 0
            if left:
                self._abandon = False
                self._write([self._drop_line(left)])
            self._flush_repeats(time.monotonic(), True, [])
            for stream in (self._out or sys.stdout, self._err or sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass


_printer: Printer | None = None
_printer_lock = threading.Lock()


def printer() -> Printer:
    """This process's printer of forwarded job output."""
    global _printer
    pr = _printer
    if pr is None or pr.pid != os.getpid():
        with _printer_lock:
            # A forked child has its parent's printer, but not its thread.
            if _printer is None or _printer.pid != os.getpid():
                # In a worker: its stdout is a pipe its node reads, so lines
                # of nested jobs go out in order with the job's own.
                in_worker = bool(os.environ.get("LUCIDITY_NODE_ID"))
                # (and the top caller collapses repeats, not each worker)
                _printer = Printer(sync=in_worker, dedup=False if in_worker else None)
            pr = _printer
    return pr


def settle(timeout: float = 0.5) -> None:
    """Let the lines jobs printed so far be written before the caller goes
    on (bounded): a blocking call's lines come before what its caller
    prints next. Nothing to do, at once, when no job printed anything."""
    pr = _printer
    if pr is not None and pr.written < pr.queued and pr.pid == os.getpid():
        pr.flush(timeout)


def show_dropped(count: Any) -> None:
    """Tell that a node dropped `count` lines of job output for us."""
    if isinstance(count, int) and count > 0:
        printer().put(_OWN, True, [], count)


def show_output(header: dict[str, Any], payload: list[Any]) -> None:
    """An OUTPUT message from a node, to this process's stdout/stderr."""
    data = bytes(payload[0]) if payload else b""
    lines = data.decode(errors="replace").split("\n") if payload else []
    dropped = header.get("dropped", 0)
    where = prefix(header.get("job"), header.get("pid"), header.get("node"))
    printer().put(
        where,
        bool(header.get("err")),
        lines,
        dropped if isinstance(dropped, int) and dropped > 0 else 0,
    )
