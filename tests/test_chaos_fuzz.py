"""Fuzz `lucidity.cluster.wire.protocol.decode`: any bytes give a Message or a FrameError.

Daemons call `decode` on every frame a peer sends and catch only `FrameError`
(and `KeyError`), so anything else escaping it is a crash of the daemon.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lucidity.cluster.wire import protocol as p

PREFIX = p.MAGIC + bytes((p.VERSION,))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _check(frame: bytes) -> None:
    try:
        msg = p.decode(frame)
    except p.FrameError:
        return
    assert isinstance(msg, p.Message)
    assert isinstance(msg.type, p.MsgType)
    assert isinstance(msg.header, dict)


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.binary(max_size=300))
def test_decode_random_bytes(frame: bytes) -> None:
    _check(frame)


@settings(max_examples=400, deadline=None, database=None)
@given(
    version=st.integers(0, 255),
    msg_type=st.integers(0, 255),
    body=st.one_of(
        st.binary(max_size=200),
        st.text(alphabet='{}[]":,0123456789.eE+-tfnrul \\x', max_size=200).map(
            str.encode
        ),
        json_values.map(lambda v: json.dumps(v).encode()),
        json_values.map(lambda v: json.dumps(v).encode("utf-16")),
    ),
)
def test_decode_structured(version: int, msg_type: int, body: bytes) -> None:
    _check(p.MAGIC + bytes((version, msg_type)) + body)


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(p.MAX_HEADER_BYTES - 8, p.MAX_HEADER_BYTES + 8))
def test_decode_size_limit(size: int) -> None:
    frame = PREFIX + b"\x01" + b" " * (size - 4)
    if size > p.MAX_HEADER_BYTES:
        with pytest.raises(p.FrameError, match="exceeds"):
            p.decode(frame)
    else:
        _check(frame)


@settings(max_examples=50, deadline=None, database=None)
@example(PREFIX + b"\x01" + b"[" * 50_000)
@example(PREFIX + b"\x0d" + b'{"a":' + b"1" * 5000 + b"}")
@given(
    st.one_of(
        st.integers(2000, 60_000).map(lambda n: PREFIX + b"\x01" + b"[" * n),
        st.integers(4301, 60_000).map(
            lambda n: PREFIX + b"\x0d" + b'{"a":' + b"7" * n + b"}"
        ),
    )
)
def test_decode_pathological_json(frame: bytes) -> None:
    _check(frame)
