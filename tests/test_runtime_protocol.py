"""Unit tests of the wire format (`lucidity.cluster.wire.protocol`) and of membership by
heartbeat (`lucidity.cluster._liveness`, driven by a fake clock)."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lucidity.cluster._liveness import Membership
from lucidity.cluster.wire import protocol as p

# ---- headers ------------------------------------------------------------------


@pytest.mark.parametrize("msg_type", list(p.MsgType))
def test_encode_decode_round_trip(msg_type: p.MsgType) -> None:
    header = {"id": 7, "target": "pkg.mod:f", "ok": True, "nodes": [{"a": None}]}
    frame = p.encode(msg_type, header)
    assert frame[:2] == p.MAGIC
    assert frame[2] == p.VERSION
    assert frame[3] == int(msg_type)
    msg = p.decode(frame)
    assert msg == p.Message(msg_type, header)
    assert p.decode(memoryview(frame)) == msg  # zmq hands out buffers too


def test_empty_header_is_an_empty_object() -> None:
    assert p.decode(p.encode(p.MsgType.READY)).header == {}
    assert p.decode(p.MAGIC + bytes((p.VERSION, p.MsgType.STOP))).header == {}


def test_message_is_frozen() -> None:
    msg = p.decode(p.encode(p.MsgType.SUBMIT, {"id": 1}))
    with pytest.raises(AttributeError):
        msg.type = p.MsgType.RUN  # type: ignore[misc]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(list(p.MsgType)),
    st.dictionaries(st.text(max_size=16), json_values, max_size=6),
)
def test_any_json_header_round_trips(msg_type: p.MsgType, header: dict) -> None:
    assert p.decode(p.encode(msg_type, header)) == p.Message(msg_type, header)


UNKNOWN_TYPE = next(i for i in range(256) if i not in set(p.MsgType))


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (b"", "bad magic"),
        (b"LU", "bad magic"),
        (b"XY\x01\x01{}", "bad magic"),
        (b"lu\x01\x01{}", "bad magic"),
        (b"LU" + bytes((p.VERSION + 1, 1)) + b"{}", "protocol version"),
        (b"LU\x00\x01{}", "protocol version"),
        (b"LU" + bytes((p.VERSION, UNKNOWN_TYPE)) + b"{}", "unknown message type"),
        (b"LU" + bytes((p.VERSION, 1)) + b"{not json", "not JSON"),
        (b"LU" + bytes((p.VERSION, 1)) + b"\xff\xfe", "not JSON"),
        (b"LU" + bytes((p.VERSION, 1)) + b"[1, 2]", "not a JSON object"),
        (b"LU" + bytes((p.VERSION, 1)) + b'"text"', "not a JSON object"),
        (b"LU" + bytes((p.VERSION, 1)) + b"null", "not a JSON object"),
    ],
)
def test_decode_refuses_bad_frames(frame: bytes, needle: str) -> None:
    with pytest.raises(p.FrameError, match=needle):
        p.decode(frame)


def test_decode_refuses_an_oversized_header() -> None:
    body = json.dumps({"pad": "x" * p.MAX_HEADER_BYTES}).encode()
    frame = p.MAGIC + bytes((p.VERSION, p.MsgType.SUBMIT)) + body
    with pytest.raises(p.FrameError, match="exceeds"):
        p.decode(frame)
    # The limit is on the whole frame: just under it still decodes.
    pad = p.MAX_HEADER_BYTES - len(p.encode(p.MsgType.SUBMIT, {"pad": ""}))
    ok = p.encode(p.MsgType.SUBMIT, {"pad": "x" * pad})
    assert len(ok) == p.MAX_HEADER_BYTES
    assert p.decode(ok).header["pad"] == "x" * pad


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(p.FrameError, ValueError)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_frame_error(data: bytes) -> None:
    try:
        msg = p.decode(data)
    except p.FrameError:
        return
    assert isinstance(msg.type, p.MsgType) and isinstance(msg.header, dict)


# ---- payloads -----------------------------------------------------------------

BIG = 4 * 1024 * 1024


def test_small_payload_is_one_frame() -> None:
    frames = p.dumps_payload((1, "two", [3.0]))
    assert len(frames) == 1
    assert p.loads_payload(frames) == (1, "two", [3.0])


def _wire(frames: list[object]) -> list[bytes]:
    """What the other end receives: each frame as its own bytes."""
    return [bytes(memoryview(f)) for f in frames]  # type: ignore[arg-type]


def test_large_buffers_travel_out_of_band() -> None:
    data = bytes(range(256)) * (BIG // 256)
    mutable = bytearray(b"\x01" * BIG)
    view = memoryview(bytes(b"\x02" * BIG))
    obj = {
        "bytes": pickle.PickleBuffer(data),
        "bytearray": pickle.PickleBuffer(mutable),
        "memoryview": pickle.PickleBuffer(view),
        "small": [1, 2, 3],
    }
    frames = p.dumps_payload(obj)
    assert len(frames) == 4  # the pickle, then one frame per buffer
    assert len(frames[0]) < 4096  # the big data is not inside the pickle
    assert sorted(memoryview(f).nbytes for f in frames[1:]) == [BIG] * 3
    # Zero-copy on the way out: the frames share the caller's memory.
    assert any(memoryview(f).obj is data for f in frames[1:])
    for received in (frames, _wire(frames)):
        back = p.loads_payload(received)
        assert bytes(back["bytes"]) == data
        assert bytes(back["bytearray"]) == bytes(mutable)
        assert bytes(back["memoryview"]) == bytes(view)
        assert back["small"] == [1, 2, 3]


def test_bytearray_comes_back_writable() -> None:
    frames = _wire(p.dumps_payload(pickle.PickleBuffer(bytearray(b"ab" * BIG))))
    frames[1:] = [bytearray(f) for f in frames[1:]]
    back = p.loads_payload(frames)
    assert bytes(back) == b"ab" * BIG
    back[0:1] = b"z"  # a writable buffer came back as writable


def test_loads_payload_refuses_an_empty_payload() -> None:
    with pytest.raises(p.FrameError, match="empty"):
        p.loads_payload([])


class _Plain(Exception):
    pass


class _NeedsTwo(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: B036
        return caught


def test_dumps_error_carries_the_exception_and_its_text() -> None:
    [frame] = p.dumps_error(_raised(_Plain("bad thing")))
    blob, ename, evalue, tb = pickle.loads(frame)
    assert ename.endswith("_Plain") and "test_runtime_protocol" in ename
    assert evalue == "bad thing"
    assert "Traceback (most recent call last)" in tb and "_Plain: bad thing" in tb
    exc = pickle.loads(blob)
    assert type(exc) is _Plain and str(exc) == "bad thing"


def test_dumps_error_of_an_exception_that_does_not_unpickle() -> None:
    # Pickles, but unpickling calls _NeedsTwo("x/y"): a TypeError.
    [frame] = p.dumps_error(_raised(_NeedsTwo("x", "y")))
    blob, ename, evalue, tb = pickle.loads(frame)
    assert blob is None
    assert ename.endswith("_NeedsTwo") and evalue == "x/y"
    assert "_NeedsTwo: x/y" in tb


# ---- membership with a fake clock -----------------------------------------------


def test_membership_join_beat_expire_leave() -> None:
    m = Membership(dead_after=3.0)
    assert len(m) == 0 and m.next_expiry() is None and m.members() == []
    assert m.beat("b", {"addr": "tcp://b"}, now=10.0) is True  # joined
    assert m.beat("a", {"addr": "tcp://a"}, now=11.0) is True
    assert m.beat("b", {"addr": "tcp://b", "busy": 1}, now=12.0) is False  # a beat
    assert len(m) == 2
    assert m.members() == [  # sorted by id, info as last beaten
        {"addr": "tcp://a", "id": "a"},
        {"addr": "tcp://b", "busy": 1, "id": "b"},
    ]
    assert m.next_expiry() == 14.0  # a: last seen at 11
    assert m.expire(14.0) == []  # silent for exactly dead_after: still in
    assert m.expire(14.5) == ["a"]
    assert [x["id"] for x in m.members()] == ["b"]
    assert m.next_expiry() == 15.0
    assert m.beat("b", {"addr": "tcp://b"}, now=14.9) is False
    assert m.next_expiry() == pytest.approx(17.9)
    assert m.expire(17.0) == []
    assert m.leave("b") is True
    assert m.leave("b") is False
    assert m.leave("never") is False
    assert len(m) == 0 and m.next_expiry() is None
    # An expired member that beats again joins again.
    assert m.beat("a", {"addr": "tcp://a"}, now=20.0) is True


def test_members_are_copies() -> None:
    m = Membership(dead_after=1.0)
    info = {"addr": "x"}
    m.beat("n", info, now=0.0)
    m.members()[0]["addr"] = "changed"
    assert m.members() == [{"addr": "x", "id": "n"}]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.floats(0, 100, allow_nan=False)),
        max_size=30,
    ),
    st.floats(0, 200, allow_nan=False),
)
def test_expire_keeps_exactly_the_recent_members(
    beats: list[tuple[str, float]], now: float
) -> None:
    m = Membership(dead_after=5.0)
    last: dict[str, float] = {}
    for member, t in sorted(beats, key=lambda x: x[1]):
        m.beat(member, {}, now=t)
        last[member] = t
    gone = m.expire(now)
    assert sorted(gone) == sorted(k for k, t in last.items() if now - t > 5.0)
    kept = {k for k, t in last.items() if now - t <= 5.0}
    assert {x["id"] for x in m.members()} == kept
    if kept:
        assert m.next_expiry() == min(last[k] for k in kept) + 5.0
    else:
        assert m.next_expiry() is None
