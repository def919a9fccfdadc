"""The node-worker link: multipart messages over a Unix socketpair.

A node and its workers are parent and children on one host, so their link
needs none of ZeroMQ's routing, reconnection or queueing. Over a socketpair a
send wakes the reader directly, where a ZeroMQ message also wakes an I/O
thread on each side: a round trip between two processes here took 118 us
over ZeroMQ ipc against 67 us over a socketpair, and the link carries two
hops of every job.

A message is its frame count (u32), each frame's length (u64), then the
frames, all little-endian. The node's end is non-blocking (`Reader.read`
returns what has come in full, `Writer` queues what the kernel would not take
yet); the worker's end blocks (`recv`, `send`).
"""

from __future__ import annotations

import collections
import socket
import struct
from collections.abc import Sequence
from typing import Any

__all__ = ["BUFFER_BYTES", "Reader", "Writer", "pack", "recv", "send"]

_COUNT = struct.Struct("<I")
_COUNT_SIZE = _COUNT.size
# A read takes up to this much; a message larger than this that has not
# come in full is received straight into a buffer of its own size. Below
# malloc's mmap threshold (128 KiB): `recv(256 KiB)` cost 10 us a call here,
# its buffer mapped and unmapped each time, against 1 us for 64 KiB.
_CHUNK = 64 * 1024
# Socket buffers: most messages then pass in one system call each way.
BUFFER_BYTES = 1024 * 1024
# sendmsg takes at most IOV_MAX (1024 on Linux) buffers per call.
_MAX_IOV = 512


def pack(frames: Sequence[Any]) -> list[Any]:
    """The buffers that send `frames` as one message (empty frames are
    counted in the lengths and carry no buffer)."""
    views = [f if type(f) is bytes else memoryview(f).cast("B") for f in frames]
    n = len(views)
    head = struct.pack(f"<I{n}Q", n, *[len(v) for v in views])
    return [head, *[v for v in views if len(v)]]


class Reader:
    """Parses messages out of a stream socket's bytes."""

    __slots__ = ("sock", "rest", "big", "got", "lengths", "ready")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rest: bytes = b""  # bytes of a message not yet complete
        # A large message being received into its own buffer.
        self.big: memoryview | None = None
        self.got = 0
        self.lengths: tuple[int, ...] = ()
        self.ready: collections.deque[list[memoryview]] = collections.deque()

    def read(self) -> list[list[memoryview]]:
        """Messages complete after one read of the socket (maybe none).

        Raises EOFError when the peer has closed its end, and whatever the
        socket raises (BlockingIOError on a non-blocking socket with nothing
        to read). Frames are read-only views of buffers this reader never
        reuses, so they may be kept.
        """
        if self.big is not None:
            n = self.sock.recv_into(self.big[self.got :])
            if not n:
                raise EOFError
            self.got += n
            if self.got < len(self.big):
                return []
            # Read-only, as frames of bytes are: a job's arguments arrive
            # the same however large they are.
            whole, self.big = self.big.toreadonly(), None
            return [_split(whole, 0, self.lengths)]
        data = self.sock.recv(_CHUNK)
        if not data:
            raise EOFError
        if self.rest:
            data = self.rest + data
            self.rest = b""
        view = memoryview(data)
        size = len(data)
        out: list[list[memoryview]] = []
        pos = 0
        while size - pos >= _COUNT_SIZE:
            (n,) = _COUNT.unpack_from(data, pos)
            start = pos + _COUNT_SIZE + 8 * n
            if size < start:
                break
            lengths = struct.unpack_from(f"<{n}Q", data, pos + _COUNT_SIZE)
            end = start + sum(lengths)
            if size < end:
                if end - start > _CHUNK:
                    # Large: the rest goes straight into a buffer of its own.
                    buf = memoryview(bytearray(end - start))
                    have = size - start
                    buf[:have] = view[start:]
                    self.big, self.got, self.lengths = buf, have, lengths
                    return out
                break
            out.append(_split(view, start, lengths))
            pos = end
        if pos < size:
            self.rest = bytes(view[pos:])
        return out


def _split(view: memoryview, start: int, lengths: Sequence[int]) -> list[memoryview]:
    frames = []
    for length in lengths:
        frames.append(view[start : start + length])
        start += length
    return frames


def recv(reader: Reader) -> list[memoryview]:
    """The next message, blocking (for a blocking socket's reader)."""
    ready = reader.ready
    while not ready:
        ready.extend(reader.read())
    return ready.popleft()


def send(sock: socket.socket, frames: Sequence[Any]) -> None:
    """Send one message whole, blocking (for a blocking socket)."""
    pending = pack(frames)
    while pending:
        sent = sock.sendmsg(pending[:_MAX_IOV])
        _consume(pending, sent)


def _consume(pending: list[Any], sent: int) -> None:
    """Drop `sent` bytes from the front of `pending`."""
    i = 0
    while sent and sent >= len(pending[i]):
        sent -= len(pending[i])
        i += 1
    del pending[:i]
    if sent:
        pending[0] = pending[0][sent:]


class Writer:
    """A non-blocking socket's outgoing messages, in order: what the kernel
    does not take at once waits here until the socket is writable."""

    __slots__ = ("sock", "pending")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: list[Any] = []

    def send(self, frames: Sequence[Any]) -> bool:
        """Queue one message and send what the socket takes now; True while
        some of it waits (then call `flush` when the socket is writable)."""
        self.pending.extend(pack(frames))
        return self.flush()

    def flush(self) -> bool:
        """Send what waits, as far as the socket takes it; True while some
        still waits. Raises OSError if the peer is gone."""
        pending = self.pending
        while pending:
            try:
                sent = self.sock.sendmsg(pending[:_MAX_IOV])
            except BlockingIOError:
                return True
            _consume(pending, sent)
        return False
