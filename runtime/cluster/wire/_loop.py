"""The one event loop shape every daemon and client I/O thread runs.

It owns a `zmq.Poller` over its sockets (and plain fds, such as a parent
pipe, a pidfd or a worker's link), dispatches each ready socket to its
handler, and runs timers from a heap. The poll timeout is the time to the
next timer: nothing sleeps, nothing polls on a period.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import zmq

__all__ = ["NOBLOCK", "EventLoop", "messages", "recv_frames", "send_frames"]

log = logging.getLogger(__name__)

Handler = Callable[[], None]

# Plain ints: pyzmq's flag enums cost an enum operation per use (hot path).
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)

# pyzmq's own functions, under its Python wrappers (hot path):
_zmq_poll = zmq.backend.zmq_poll
# The backend's send, under pyzmq's Python wrapper (which only adds the
# routing_id/group options of draft sockets): a third of the cost per frame.
_send = zmq.backend.Socket.send


class EventLoop:
    def __init__(self) -> None:
        self._poller = zmq.Poller()
        self._handlers: dict[Any, Handler] = {}
        self._timers: list[tuple[float, int, Handler]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()
        self.running = False

    def add_reader(self, sock: zmq.Socket[Any] | int, handler: Handler) -> None:
        self._handlers[sock] = handler
        self._poller.register(sock, zmq.POLLIN)

    def set_writable(self, fd: zmq.Socket[Any] | int, on: bool) -> None:
        """Also run a reader's handler when `fd` is writable (`on`), or no
        longer: for an fd with output waiting."""
        if fd in self._handlers:
            self._poller.register(fd, _POLLIN | _POLLOUT if on else _POLLIN)

    def remove_reader(self, sock: zmq.Socket[Any] | int) -> None:
        if self._handlers.pop(sock, None) is not None:
            self._poller.unregister(sock)

    def call_later(self, delay: float, handler: Handler) -> int:
        """Run `handler` after `delay` seconds; returns a handle for `cancel`."""
        seq = next(self._seq)
        heapq.heappush(self._timers, (time.monotonic() + delay, seq, handler))
        return seq

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    def stop(self) -> None:
        self.running = False

    def _run_due_timers(self) -> float | None:
        """Run every due timer; return seconds until the next one (None: none)."""
        while self._timers:
            when, seq, handler = self._timers[0]
            if seq in self._cancelled:
                heapq.heappop(self._timers)
                self._cancelled.discard(seq)
                continue
            now = time.monotonic()
            if when > now:
                return when - now
            heapq.heappop(self._timers)
            self._call(handler)
        return None

    @staticmethod
    def _call(handler: Handler) -> None:
        # One bad message or bug in a handler must not stop a daemon or a
        # client's I/O thread (that would hang every caller): log and go on.
        try:
            handler()
        except Exception:
            log.exception("event handler failed; carrying on")

    def run(self) -> None:
        self.running = True
        while self.running:
            delay = self._run_due_timers()
            if not self.running:
                break
            timeout = -1 if delay is None else max(0, int(delay * 1000) + 1)
            # zmq_poll itself: Poller.poll only checks the timeout's type.
            for sock, _ in _zmq_poll(self._poller.sockets, timeout):
                handler = self._handlers.get(sock)
                if handler is not None:
                    try:  # as `_call` does, without a call more per message
                        handler()
                    except Exception:
                        log.exception("event handler failed; carrying on")
                if not self.running:
                    break


def messages(sock: zmq.Socket[Any], copy: bool = True) -> Iterator[list[Any]]:
    """Every message waiting on `sock` now, without blocking (as `zmq.Frame`s
    unless `copy`); for a socket a poll has just found readable.

    The first message is taken at once (if the poll was wrong, zmq.Again
    ends the loop); after each one the socket is asked (ZMQ_EVENTS) whether
    more wait, instead of receiving until zmq.Again: an exception per
    wake-up costs more than the message it ends, and each ZMQ_EVENTS query
    costs pyzmq an enum lookup.
    """
    flags = _NOBLOCK
    while True:
        try:
            if copy:
                yield sock.recv_multipart(flags)
            else:
                yield recv_frames(sock, flags)
        except zmq.Again:
            return
        if not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            return


# pyzmq's send_multipart/recv_multipart do flag-enum arithmetic and checks
# per frame: about 4 us a message against under 2 us for these (the hot path
# of every job goes through them about eight times).


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any], flags: int = 0) -> None:
    """`sock.send_multipart(frames, flags, copy=False)`, cheaper. Small
    frames are copied by pyzmq anyway; large ones go without a copy."""
    last = len(frames) - 1
    more = flags | _SNDMORE
    for i, frame in enumerate(frames):
        _send(sock, frame, more if i < last else flags, False)


def recv_frames(sock: zmq.Socket[Any], flags: int = 0) -> list[zmq.Frame]:
    """`sock.recv_multipart(flags, copy=False)`, cheaper."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:  # the parts of a message arrive together
        frame = sock.recv(flags, copy=False)
        frames.append(frame)
    return frames
