"""The node-worker link (`lucidity.cluster.wire._link`): framing over a socketpair, the
node's non-blocking end, and messages of many frames through a real node."""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
from collections.abc import Iterator
from pickle import PickleBuffer
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waits import wait_until

import lucidity
from lucidity.cluster.client import get_client
from lucidity.cluster.wire import _link
from lucidity.errors import FuelExhaustedError

MIB = 1 << 20
WAIT_S = 20.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


frames_st = st.lists(st.binary(max_size=300), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(frames_st, min_size=1, max_size=8))
def test_messages_round_trip_whole_and_in_order(messages: list[list[bytes]]) -> None:
    a, b = socket.socketpair()
    try:
        for frames in messages:
            _link.send(a, frames)
        reader = _link.Reader(b)
        got = [[bytes(f) for f in _link.recv(reader)] for _ in messages]
        assert got == messages
    finally:
        a.close()
        b.close()


def test_a_message_split_across_reads_is_put_back_together(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    raw = b"".join(bytes(x) for x in _link.pack([b"head", b"x" * 1000, b""]))
    reader = _link.Reader(b)
    b.setblocking(False)
    out: list[list[memoryview]] = []
    for i in range(len(raw)):  # one byte at a time: every split point
        a.sendall(raw[i : i + 1])
        out += reader.read()
        assert len(out) == (1 if i == len(raw) - 1 else 0)
    assert [bytes(f) for f in out[0]] == [b"head", b"x" * 1000, b""]


def test_frames_stay_valid_after_later_reads(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    reader = _link.Reader(b)
    _link.send(a, [b"first", b"1" * 100])
    first = _link.recv(reader)
    sender = threading.Thread(
        target=lambda: [
            _link.send(a, [b"second", b"2" * 100]),
            _link.send(a, [b"big", b"3" * (3 * MIB)]),
        ]
    )
    sender.start()
    assert bytes(_link.recv(reader)[0]) == b"second"
    big = _link.recv(reader)
    assert bytes(big[1]) == b"3" * (3 * MIB)
    sender.join(10)
    assert [bytes(f) for f in first] == [b"first", b"1" * 100]
    assert first[1].readonly and big[1].readonly  # small or large, alike


def test_more_frames_than_one_system_call_takes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    frames = [bytes([i % 256]) * (i % 7) for i in range(3000)]  # IOV_MAX is 1024
    sender = threading.Thread(target=_link.send, args=(a, frames))
    sender.start()
    got = _link.recv(_link.Reader(b))
    sender.join(10)
    assert [bytes(f) for f in got] == frames


def test_wide_items_are_sent_as_their_bytes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    wide = memoryview(bytearray(range(16))).cast("I")  # 4 items of 4 bytes
    _link.send(a, [b"h", wide])
    assert bytes(_link.recv(_link.Reader(b))[1]) == bytes(range(16))


def test_the_writer_never_blocks_and_keeps_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A message larger than the socket takes waits in the writer; the next
    one goes after it, and both arrive whole once the reader drains."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    a.setblocking(False)
    writer = _link.Writer(a)
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB
    assert writer.send([b"big", big]) is True  # some of it waits
    assert writer.send([b"small"]) is True  # behind it, not interleaved
    reader = _link.Reader(b)
    b.setblocking(False)
    got: list[list[memoryview]] = []
    while len(got) < 2:
        writer.flush()
        try:
            got += reader.read()
        except BlockingIOError:
            pass
    assert writer.flush() is False
    assert [bytes(f) for f in got[0]] == [b"big", big]
    assert [bytes(f) for f in got[1]] == [b"small"]


def test_a_closed_peer_is_eof_for_the_reader_and_an_error_for_the_writer(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    _link.send(a, [b"last"])
    a.close()
    reader = _link.Reader(b)
    assert bytes(_link.recv(reader)[0]) == b"last"  # sent before the close
    with pytest.raises(EOFError):
        _link.recv(reader)
    b.setblocking(False)
    with pytest.raises(OSError):
        _link.Writer(b).send([b"x" * MIB])


# ---- through a real node -------------------------------------------------------


def test_payloads_of_many_frames_cross_the_node_both_ways(rt_client: Any) -> None:
    """1,500 buffers each way: more frames than one sendmsg takes."""
    from lucidity_rtapp.buffers_jobs import digests_remote, pieces_remote

    values = pieces_remote(1500, 100)
    assert len(values) == 1500
    assert all(bytes(v) == bytes([i % 256]) * 100 for i, v in enumerate(values))
    sent = [PickleBuffer(bytes([i % 256]) * (i % 50 + 1)) for i in range(1500)]
    expected = [hashlib.sha256(memoryview(v)).hexdigest() for v in sent]
    assert digests_remote(sent) == expected


def test_an_answer_sent_just_before_the_worker_exits_is_not_lost(
    rt_daemons: Any, procs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A job over its fuel answers FuelExhaustedError, and its worker exits.
    With the node stopped meanwhile, the exit and the answer are both waiting
    when it goes on, the exit seen first: the answer must still win over
    "worker lost"."""
    from lucidity_rtapp.work_jobs import spin_remote_async, square_remote

    control = rt_daemons.control()
    node = rt_daemons.node(control.endpoint)
    lucidity.connect(control.endpoint)
    get_client().wait_for_nodes(1, timeout=WAIT_S)
    assert square_remote(3) == 9  # its one worker is up and idle
    [worker] = wait_until(lambda: procs.children(node.pid), WAIT_S, "the worker")
    idle = procs.cpu_ticks(worker)
    job = spin_remote_async(30.0)
    wait_until(lambda: procs.cpu_ticks(worker) > idle + 2, WAIT_S, "the job to run")
    rt_daemons.signal(node, signal.SIGSTOP)
    try:
        # Out of fuel, it answered and exited; its stopped node has not reaped it.
        wait_until(lambda: procs.stat(worker)[0] == "Z", WAIT_S, "the worker to exit")
    finally:
        rt_daemons.signal(node, signal.SIGCONT)
    with pytest.raises(FuelExhaustedError):
        job.result(timeout=WAIT_S)
    # Not a "worker lost" that the client ran again (and that ran out of fuel too).
    assert "running it again" not in caplog.text
