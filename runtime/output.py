"""Job output: from a worker's stdout and stderr to its caller's.

A worker's fd 1 and 2 are pipes of its node (`WorkerPipes`), read without
blocking by the node's event loop: whatever writes there (print, logging's
default handler, a C extension writing to fd 1/2) is seen. `NodeOutput`
tags each line with the job the worker runs and sends it to that job's
client as an OUTPUT message (node -> client; one per read, the lines in one
frame). A send the client's queue will not take is dropped and counted; the
next OUTPUT to that client says how many. Lines of no job, or with
forwarding off (`LUCIDITY_FORWARD_OUTPUT=0`, on the node or the caller),
go to the node's own stderr, its log.

Whoever prints (a caller, or a node for its log) does it through a
`Printer`: a thread of its own writes the lines, so a slow terminal blocks
neither a client's I/O thread nor a node's loop; it holds at most
MAX_QUEUED lines and counts what it had to drop. Identical lines from
several jobs within DEDUP_S are printed once, then with a count, as Ray
does (`LUCIDITY_DEDUP_OUTPUT=0` prints every one).

Ordering: a worker flushes its stdout and stderr before it answers, and
the node reads the pipes dry before it sends the answer, so a job's lines
reach its client before its result, in order, over the same connection.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from lucidity import protocol as p
from lucidity._loop import NOBLOCK, EventLoop, send_frames

__all__ = [
    "FORWARD_ENV",
    "NodeOutput",
    "Printer",
    "WorkerPipes",
    "forwarding",
    "printer",
    "settle",
    "show_output",
]

log = logging.getLogger(__name__)

FORWARD_ENV = "LUCIDITY_FORWARD_OUTPUT"
DEDUP_ENV = "LUCIDITY_DEDUP_OUTPUT"
# One read of a pipe: up to this much (one OUTPUT message at most).
READ_BYTES = 64 * 1024
# Reads of one pipe at a job's end, at most.
_DRAIN_READS = 16
# A line longer than this is passed on in pieces of this size.
MAX_LINE = 16 * 1024
# Lines a Printer holds before it drops (and counts) new ones.
MAX_QUEUED = 10_000
# Identical lines of other jobs within this window are counted, not printed.
DEDUP_S = 5.0
# Lines a Printer's thread takes from its queue at a time.
_BATCH = 500
# The prefix of the printer's own lines (drop counts).
_OWN = "(lucidity) "
_PREFIXED = re.compile(r"\(\S+ pid=\d+ node=\S+\) ")


def forwarding() -> bool:
    """Whether job output goes to its caller (the default), not the node's log."""
    return os.environ.get(FORWARD_ENV, "1").strip() != "0"


def _prefix(job: Any, pid: Any, node: Any) -> str:
    return f"({job} pid={pid} node={node}) "


# ---- node side ----------------------------------------------------------------


class _Stream:
    __slots__ = ("fd", "err", "rest")

    def __init__(self, fd: int, err: bool) -> None:
        self.fd = fd
        self.err = err
        self.rest = b""  # a line not yet ended

    def read(self) -> list[bytes] | None:
        """The lines ended by one read; None at EOF."""
        try:
            data = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not data:
            return None
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        if len(self.rest) > MAX_LINE:
            lines.append(self.rest)
            self.rest = b""
        out = []
        for line in lines:
            while len(line) > MAX_LINE:
                out.append(line[:MAX_LINE])
                line = line[MAX_LINE:]
            out.append(line)
        return out

    def take_rest(self) -> list[bytes]:
        rest, self.rest = self.rest, b""
        return [rest] if rest else []


class WorkerPipes:
    """A worker's stdout and stderr pipes: `child` are its ends (for Popen,
    closed here once it has them), the node reads the others."""

    def __init__(self) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.child: tuple[int, ...] = (out_w, err_w)
        self.streams = (_Stream(out_r, False), _Stream(err_r, True))
        # To ask both pipes at once, in one system call, whether anything
        # waits (at every job's end: most jobs print nothing).
        self._poll = select.poll()
        for s in self.streams:
            self._poll.register(s.fd, select.POLLIN)
        self.closed = False

    def close_child(self) -> None:
        for fd in self.child:
            os.close(fd)
        self.child = ()

    def waiting(self) -> list[_Stream]:
        """The streams with something to read (or at EOF) now."""
        ready = self._poll.poll(0)
        if not ready:
            return []
        fds = {fd for fd, _ in ready}
        return [s for s in self.streams if s.fd in fds]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in self.child:
                os.close(fd)
            for s in self.streams:
                os.close(s.fd)


class NodeOutput:
    """A node's forwarding of its workers' output to the jobs' clients.

    `where(worker)` says what a worker runs now: (client identity, job id,
    target, whether its client wants the output) or None, and its pid.
    """

    def __init__(self, loop: EventLoop, front: zmq.Socket[Any], node_id: str) -> None:
        self.loop = loop
        self.front = front
        self.node_id = node_id
        self.enabled = forwarding()
        self.local = Printer(sys.stderr, sys.stderr)
        # Lines dropped per client (its queue was full), told with the next
        # OUTPUT that goes through.
        self.dropped: dict[bytes, int] = {}

    def attach(self, pipes: WorkerPipes, where: Callable[[], Any]) -> None:
        for s in pipes.streams:
            self.loop.add_reader(
                s.fd, functools.partial(self._on_pipe, pipes, s, where)
            )

    def _on_pipe(
        self, pipes: WorkerPipes, s: _Stream, where: Callable[[], Any]
    ) -> None:
        lines = s.read()
        if lines is None:  # the worker is gone: its exit closes the pipes
            self.loop.remove_reader(s.fd)
            return
        if lines:
            self._emit(where(), s.err, lines)

    def job_done(self, pipes: WorkerPipes, where: Callable[[], Any]) -> None:
        """The job `where()` names has answered: pass on every line it
        wrote (the worker flushed before it answered), then what is left of
        an unended line. Before its result is sent."""
        at = where()
        for s in pipes.waiting():
            # Bounded: a thread of the worker's that never stops printing
            # must not keep the node here (the rest is read as it comes).
            for _ in range(_DRAIN_READS):
                lines = s.read()
                if not lines:
                    break
                self._emit(at, s.err, lines)
        for s in pipes.streams:
            rest = s.take_rest()
            if rest:
                self._emit(at, s.err, rest)

    def detach(self, pipes: WorkerPipes, where: Callable[[], Any]) -> None:
        """The worker exited: what it wrote last, then the pipes closed."""
        if pipes.closed:
            return
        self.job_done(pipes, where)
        for s in pipes.streams:
            self.loop.remove_reader(s.fd)
        pipes.close()

    def _emit(self, at: Any, err: bool, lines: list[bytes]) -> None:
        task, pid = at
        if task is None:
            self.local.put(_prefix("-", pid, self.node_id), err, _text(lines))
            return
        client, job_id, target, wanted = task
        job = str(target).rpartition(":")[2]
        if not (self.enabled and wanted):
            self.local.put(_prefix(job, pid, self.node_id), err, _text(lines))
            return
        header: dict[str, Any] = {
            "id": job_id,
            "job": job,
            "pid": pid,
            "node": self.node_id,
        }
        if err:
            header["err"] = 1
        dropped = self.dropped.pop(client, 0)
        if dropped:
            header["dropped"] = dropped
        head = p.encode(p.MsgType.OUTPUT, header)
        try:
            send_frames(self.front, [client, head, b"\n".join(lines)], NOBLOCK)
        except zmq.Again:
            # Its client is not keeping up: drop, and say so later.
            self.dropped[client] = dropped + len(lines)
        except zmq.ZMQError:
            # Not connected (gone, or reconnecting): keep it in the log.
            self.local.put(_prefix(job, pid, self.node_id), err, _text(lines))

    def close(self) -> None:
        self.local.close()


def _lines_in(item: tuple[str, bool, str]) -> int:
    """How many job lines a queued line stands for (a drop count: that many)."""
    if item[0] == _OWN:
        return int(item[2].split()[0])
    return 1


def _text(lines: list[bytes]) -> list[str]:
    return [line.decode(errors="replace") for line in lines]


# ---- caller side ----------------------------------------------------------------


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
        # Lines ever queued, and ever taken and written (or given up).
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
            room = MAX_QUEUED - len(self._queue)
            if room < len(lines):
                self._dropped += len(lines) - max(room, 0)
                lines = lines[: max(room, 0)]
            self._queue.extend((prefix, err, line) for line in lines)
            self.queued += len(lines)
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
                self.written += taken
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


def show_output(header: dict[str, Any], payload: list[Any]) -> None:
    """An OUTPUT message from a node, to this process's stdout/stderr."""
    data = bytes(payload[0]) if payload else b""
    lines = data.decode(errors="replace").split("\n") if payload else []
    dropped = header.get("dropped", 0)
    prefix = _prefix(header.get("job"), header.get("pid"), header.get("node"))
    printer().put(
        prefix,
        bool(header.get("err")),
        lines,
        dropped if isinstance(dropped, int) and dropped > 0 else 0,
    )
