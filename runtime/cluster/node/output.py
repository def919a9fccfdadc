"""Job output, a node's side: from a worker's stdout and stderr to its caller.

A worker's fd 1 and 2 are pipes of its node (`WorkerPipes`), read without
blocking by the node's event loop: whatever writes there (print, logging's
default handler, a C extension writing to fd 1/2) is seen, and a worker
never blocks on its output. `NodeOutput` tags each line with the job the
worker runs and sends it to that job's client as an OUTPUT message (node ->
client; one per read, the lines in one frame), which prints it
(`lucidity.printer`). A send the client's queue will not take is dropped and
counted; the next OUTPUT to that client says how many. Lines of no job, or
with forwarding off (`LUCIDITY_FORWARD_OUTPUT=0`, on the node or the
caller), go to the node's own stderr, its log, through a `Printer` (the
loop never waits on it).

Ordering: a worker flushes its stdout and stderr before it answers, and
the node reads the pipes dry before it sends the answer, so a job's lines
reach its client before its result, in order, over the same connection.
"""

from __future__ import annotations

import functools
import os
import select
import sys
from collections.abc import Callable
from typing import Any

import zmq

from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import NOBLOCK, EventLoop, send_frames

# Shared with the client, so defined on the wire; named here as before.
from lucidity.cluster.wire.protocol import FORWARD_ENV, forwarding
from lucidity.printer import Printer
from lucidity.printer import prefix as _prefix

__all__ = ["FORWARD_ENV", "NodeOutput", "WorkerPipes", "forwarding"]

# One read of a pipe: up to this much (one OUTPUT message at most).
READ_BYTES = 64 * 1024
# Reads of one pipe at a job's end, at most.
_DRAIN_READS = 16
# A line longer than this is passed on in pieces of this size.
MAX_LINE = 16 * 1024


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
        # OUTPUT that goes through, or with the client's next RESULT
        # (`untold`): a job's last lines can be the ones dropped.
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

    def untold(self, client: bytes) -> int:
        """The lines dropped for `client` not told yet, now told by the
        caller (a RESULT, which is never dropped, carries them)."""
        return self.dropped.pop(client, 0)

    def close(self) -> None:
        self.local.close()


def _text(lines: list[bytes]) -> list[str]:
    return [line.decode(errors="replace") for line in lines]
