"""The wire format: message types, header encoding, payload (de)serialisation.

Every message is a ZeroMQ multipart message whose first frame is a header:
two magic bytes, the protocol version, the message type, then a small JSON
object (a fixed, non-executable encoding). Frames after the header are the
payload: a pickle (protocol 5) followed by its out-of-band buffers, one frame
each. Between processes of one host, large buffers go through shared memory
instead (`lucidity.cluster.wire._shm`): the payload then starts with a manifest frame and
those buffers' frames are descriptors. Daemons route payload frames as opaque
bytes and never unpickle them; only clients and workers, which run user code
anyway, do.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import pickle
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

from lucidity.cluster.wire import _shm

__all__ = [
    "FORWARD_ENV",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "VERSION",
    "FrameError",
    "Message",
    "MsgType",
    "check_cancel",
    "check_submit",
    "decode",
    "discard_payload",
    "dumps_error",
    "dumps_payload",
    "encode",
    "forwarding",
    "loads_payload",
    "loads_request",
]

log = logging.getLogger(__name__)

MAGIC = b"LU"
VERSION = 1
# Headers are small: a job id, a target name, options. Anything bigger is garbage.
MAX_HEADER_BYTES = 64 * 1024

# Job output (OUTPUT messages) goes to its caller unless this is "0", read by
# both ends: such a client asks for none (SUBMIT's `quiet`), such a node sends
# none.
FORWARD_ENV = "LUCIDITY_FORWARD_OUTPUT"


def forwarding() -> bool:
    """Whether job output goes to its caller (the default), not the node's log."""
    return os.environ.get(FORWARD_ENV, "1").strip() != "0"


# The target of a pickled callable (Executor, joblib): "<pickled>:MODULE:NAME",
# for logs and code shipping; the callable travels ahead of its arguments.
PICKLED_TARGET = "<pickled>"


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
    # node -> client: lines a job wrote to stdout/stderr (lucidity.cluster.node.output)
    OUTPUT = 17
    # worker <-> node
    READY = 20
    RUN = 21
    DONE = 22
    BLOCKED = 23
    UNBLOCKED = 24
    STOP = 25


# By byte: a dict lookup is several times cheaper than MsgType(byte).
_TYPES = {int(t): t for t in MsgType}


class FrameError(ValueError):
    """A message that is malformed, truncated, oversized or of another version."""


class Message(NamedTuple):
    # A tuple, not a frozen dataclass: made for every message, and a frozen
    # dataclass's __init__ goes through object.__setattr__ per field.
    type: MsgType
    header: dict[str, Any]


# Made once: `json.dumps(..., separators=...)` builds an encoder per call,
# and `json.loads(bytes)` sniffs the encoding first (headers are on every
# hop of every job).
_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_raw_decode_json = json.JSONDecoder().raw_decode
# The first four bytes of a header, by type.
_PREFIX = {t: MAGIC + bytes((VERSION, int(t))) for t in MsgType}


def encode(msg_type: MsgType, header: dict[str, Any] | None = None) -> bytes:
    return _PREFIX[msg_type] + _encode_json(header or {}).encode()


def with_id(head: bytes, job_id: int) -> bytes:
    """`head` (an encoded header holding at least one key) with
    `"id": job_id` put first in it: a header made once, an id per job."""
    return b'%s{"id":%d,%s' % (head[:4], job_id, head[5:])


def decode(frame: bytes | memoryview) -> Message:
    """Parse a header frame; raise `FrameError` on anything unexpected."""
    data = bytes(frame)
    if len(data) > MAX_HEADER_BYTES:
        raise FrameError(f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    if len(data) < 4 or data[:2] != MAGIC:
        raise FrameError("not a lucidity frame (bad magic)")
    if data[2] != VERSION:
        raise FrameError(f"protocol version {data[2]}, expected {VERSION}")
    msg_type = _TYPES.get(data[3])
    if msg_type is None:
        raise FrameError(f"unknown message type {data[3]}")
    try:
        header: object = {}
        if len(data) > 4:
            text = data[4:].decode()
            # Not `decode`: it matches whitespace around the value with a
            # regex, twice; our encoder writes none, so none is accepted.
            header, end = _raw_decode_json(text)
            if end != len(text):
                raise ValueError(f"extra data at {end}")
    except (ValueError, RecursionError) as exc:  # bad UTF-8, JSON, huge ints, nesting
        raise FrameError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a JSON object")
    return Message(msg_type, header)


# ---- header fields, checked before a daemon acts on a message ----------------

# Limits of a SUBMIT's numbers: past these it is garbage, not a job (2**53:
# what every JSON implementation keeps exact).
MAX_INT = 2**53
MAX_TARGET_CHARS = 1024
BATCH_KINDS = ("tuples", "single")
_DIGEST = re.compile(r"[0-9a-f]{64}").fullmatch


def _bad_int(name: str, value: object, low: int, high: int) -> FrameError:
    return FrameError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


# A SUBMIT's integer fields and their ranges (depth's top is the caller's).
_SUBMIT_INTS = (
    ("memory", 1, MAX_INT),
    ("fuel", 1, MAX_INT),
    ("set_ms", 1, MAX_INT),
    ("max_mb", 1, MAX_INT),
)


def check_submit(header: dict[str, Any], max_depth: int = 1000) -> None:
    """Raise `FrameError` unless every field of a SUBMIT header has its type
    and range: a node checks the whole header before it takes a slot, so a
    malformed job is dropped whole, never half-started. (On every job: one
    pass, no call per field.)"""
    get = header.get
    job_id = get("id")
    if type(job_id) is not int or not 0 <= job_id <= MAX_INT:
        raise _bad_int("id", job_id, 0, MAX_INT)
    target = get("target")
    if not isinstance(target, str) or ":" not in target:
        raise FrameError(f"target must be 'module:function', got {target!r}")
    if len(target) > MAX_TARGET_CHARS:
        raise FrameError(f"target of {len(target)} characters")
    bundle = get("bundle")
    if bundle is not None and not (isinstance(bundle, str) and _DIGEST(bundle)):
        raise FrameError(f"bundle must be a sha256 hex digest, got {bundle!r}")
    depth = get("depth")
    if depth is not None and (type(depth) is not int or not 0 <= depth <= max_depth):
        raise _bad_int("depth", depth, 0, max_depth)
    for name, low, high in _SUBMIT_INTS:
        value = get(name)
        if value is not None and (type(value) is not int or not low <= value <= high):
            raise _bad_int(name, value, low, high)
    shm = get("shm")
    if shm is not None and (type(shm) not in (int, bool) or shm not in (0, 1)):
        raise FrameError(f"shm must be 0 or 1, got {shm!r}")
    batch = get("batch")
    if batch is not None and batch not in BATCH_KINDS:
        raise FrameError(f"batch must be one of {BATCH_KINDS}, got {batch!r}")


def check_cancel(header: dict[str, Any]) -> None:
    """Raise `FrameError` unless a CANCEL names a job id (and a sane grace)."""
    job_id, grace = header.get("id"), header.get("grace_ms")
    if type(job_id) is not int or not 0 <= job_id <= MAX_INT:
        raise _bad_int("id", job_id, 0, MAX_INT)
    if grace is not None and (type(grace) is not int or not 0 <= grace <= MAX_INT):
        raise _bad_int("grace_ms", grace, 0, MAX_INT)


def dumps_payload(obj: object, shm: _shm.Outbound | None = None) -> list[Any]:
    """Pickle `obj` (protocol 5): the pickle frame, then each out-of-band buffer.

    With `shm` (the receiver shares this host), a buffer of at least
    `_shm.THRESHOLD` bytes goes through shared memory and its frame is a
    descriptor; the payload then starts with a manifest frame saying which.
    """
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return [data]  # most payloads
    if shm is None:
        return [data, *(b.raw() for b in buffers)]
    frames: list[Any] = [data]
    placed = []
    for index, buf in enumerate(buffers):
        raw = buf.raw()
        desc = shm.place(raw)
        if desc is None:
            frames.append(raw)
        else:
            frames.append(desc)
            placed.append(index)
    if not placed:
        return frames
    return [_manifest(placed), *frames]


# An Inbound, or what makes one when a payload turns out to hold descriptors
# (most payloads do not: no object made per result).
InboundLike: TypeAlias = "_shm.Inbound | Callable[[], _shm.Inbound] | None"


def _inbound(shm: InboundLike) -> _shm.Inbound:
    if shm is None:
        return _shm.Inbound()
    return shm if isinstance(shm, _shm.Inbound) else shm()


def loads_payload(frames: Sequence[Any], shm: InboundLike = None) -> Any:
    """Unpickle a payload; descriptors are mapped as `shm` says (by default
    read-only, from any private lucidity directory: a job's arguments)."""
    return _unpickle(frames, _manifest_of(frames), shm)


def loads_request(
    frames: Sequence[Any], reply: bool = False
) -> tuple[Any, _shm.Outbound | None]:
    """A worker's side of a job: its arguments, and how to send its result
    (None: as frames; else, when the caller asked for it with `reply` (the
    job's "shm" header), through the node's shared-memory directory, an
    echoed argument pointing back at the caller's file)."""
    manifest = _manifest_of(frames)
    # An argument that came through shared memory may come back as itself.
    echo = None if manifest is None else _shm.Inbound()
    args = _unpickle(frames, manifest, echo)
    directory = _shm.node_dir_from_env() if reply else None
    if directory is None:
        return args, None
    return args, _shm.Outbound(lambda: directory, "r", echo=echo)


def discard_payload(frames: Sequence[Any], shm: InboundLike) -> None:
    """Drop a payload unread: unlink the shared-memory files it hands over."""
    try:
        manifest = _manifest_of(frames)
    except FrameError:
        return
    if manifest is not None and manifest["shm"]:
        inbound = _inbound(shm)
        for index in manifest["shm"]:
            inbound.discard(frames[2 + index])


# A payload with buffers in shared memory starts with this frame (a pickle
# starts with PROTO, 0x80): {"host": boot id, "shm": [buffer index, ...]}.
MANIFEST = b"LS\x01"
_MANIFEST_0 = MANIFEST[0]


def _manifest(placed: list[int]) -> bytes:
    body = {"host": _shm.boot_id(), "shm": placed}
    return MANIFEST + _encode_json(body).encode()


def _manifest_of(frames: Sequence[Any]) -> dict[str, Any] | None:
    """The payload's manifest (checked against its frames), None if it has none."""
    if not frames:
        raise FrameError("payload is empty")
    head = frames[0]
    # A pickle starts with PROTO (0x80): most payloads end here, on one byte.
    if not len(head) or head[0] != _MANIFEST_0 or bytes(head[:3]) != MANIFEST:
        return None  # a plain pickle
    if len(head) > MAX_HEADER_BYTES:
        raise FrameError("payload manifest too large")
    raw = bytes(head)
    try:
        manifest = json.loads(raw[3:])
    except (ValueError, RecursionError):
        raise FrameError("payload manifest is not JSON") from None
    if not isinstance(manifest, dict):
        raise FrameError("payload manifest is not a JSON object")
    placed = manifest.get("shm")
    count = len(frames) - 2
    if (
        count < 0
        or not isinstance(placed, list)
        or not all(type(i) is int and 0 <= i < count for i in placed)
        or len(set(placed)) != len(placed)
    ):
        raise FrameError("payload manifest does not match its frames")
    return manifest


def _unpickle(
    frames: Sequence[Any], manifest: dict[str, Any] | None, shm: InboundLike
) -> Any:
    """The payload's object, its descriptors (as `manifest` lists) mapped."""
    if manifest is None:
        return pickle.loads(frames[0], buffers=frames[1:])
    buffers: list[Any] = list(frames[2:])
    placed: list[int] = manifest["shm"]
    if placed:
        inbound = _inbound(shm)
        if manifest.get("host") != _shm.boot_id():
            raise _shm.ShmError("shm descriptors from another host")
        for n, index in enumerate(placed):
            try:
                buffers[index] = inbound.map(buffers[index])
            except BaseException:
                for rest in placed[n + 1 :]:
                    inbound.discard(buffers[rest])
                raise
    return pickle.loads(frames[1], buffers=buffers)


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
