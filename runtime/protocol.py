"""The wire format: message types, header encoding, payload (de)serialisation.

Every message is a ZeroMQ multipart message whose first frame is a header:
two magic bytes, the protocol version, the message type, then a small JSON
object (a fixed, non-executable encoding). Frames after the header are the
payload: a pickle (protocol 5) followed by its out-of-band buffers, one frame
each. Daemons route payload frames as opaque bytes and never unpickle them;
only clients and workers, which run user code anyway, do.
"""

from __future__ import annotations

import enum
import json
import logging
import pickle
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAGIC",
    "MAX_HEADER_BYTES",
    "VERSION",
    "FrameError",
    "Message",
    "MsgType",
    "decode",
    "dumps_error",
    "dumps_payload",
    "encode",
    "loads_payload",
]

log = logging.getLogger(__name__)

MAGIC = b"LU"
VERSION = 1
# Headers are small: a job id, a target name, options. Anything bigger is garbage.
MAX_HEADER_BYTES = 64 * 1024


class MsgType(enum.IntEnum):
    # node -> control
    HEARTBEAT = 1
    # client -> control; control -> client
    SUBSCRIBE = 2
    NODES = 3
    # client -> node
    SUBMIT = 10
    CANCEL = 11
    # node -> client
    RESULT = 12
    # client -> node (liveness both ways); node -> client
    PING = 13
    PONG = 14
    # node -> client: send me this bundle; client -> node: here it is
    FETCH = 15
    BUNDLE = 16
    # worker <-> node
    READY = 20
    RUN = 21
    DONE = 22
    BLOCKED = 23
    UNBLOCKED = 24
    STOP = 25


class FrameError(ValueError):
    """A message that is malformed, truncated, oversized or of another version."""


@dataclass(frozen=True)
class Message:
    type: MsgType
    header: dict[str, Any]


def encode(msg_type: MsgType, header: dict[str, Any] | None = None) -> bytes:
    body = json.dumps(header or {}, separators=(",", ":")).encode()
    return MAGIC + bytes((VERSION, int(msg_type))) + body


def decode(frame: bytes | memoryview) -> Message:
    """Parse a header frame; raise `FrameError` on anything unexpected."""
    data = bytes(frame)
    if len(data) > MAX_HEADER_BYTES:
        raise FrameError(f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    if len(data) < 4 or data[:2] != MAGIC:
        raise FrameError("not a lucidity frame (bad magic)")
    if data[2] != VERSION:
        raise FrameError(f"protocol version {data[2]}, expected {VERSION}")
    try:
        msg_type = MsgType(data[3])
    except ValueError:
        raise FrameError(f"unknown message type {data[3]}") from None
    try:
        header = json.loads(data[4:]) if len(data) > 4 else {}
    except (ValueError, RecursionError) as exc:  # bad UTF-8, JSON, huge ints, nesting
        raise FrameError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a JSON object")
    return Message(msg_type, header)


def dumps_payload(obj: object) -> list[Any]:
    """Pickle `obj` (protocol 5): the pickle frame, then each out-of-band buffer."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [data, *(b.raw() for b in buffers)]


def loads_payload(frames: Sequence[Any]) -> Any:
    if not frames:
        raise FrameError("payload is empty")
    return pickle.loads(frames[0], buffers=frames[1:])


def dumps_error(exc: BaseException) -> list[Any]:
    """The payload of a failed job: the exception if it pickles, and its text always."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    ename = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        blob: bytes | None = pickle.dumps(exc, protocol=5)
        # An exception that pickles but cannot unpickle is common.
        pickle.loads(pickle.dumps(exc, protocol=5))
    except Exception:
        blob = None
    return [pickle.dumps((blob, ename, str(exc), tb), protocol=5)]
