"""Shared memory's descriptors: the small frame that stands for a buffer.

It owns the descriptor (`{"dir", "name", "size"}` as JSON, never a pickle)
and its validation (a descriptor comes off the wire, so it may only name a
plain file in a lucidity directory, of a sane size), and writing a buffer out
to a new file (None when /dev/shm is missing or full: the caller sends the
bytes as a frame instead). It may not map files (`mapping`) or decide which
buffers go to files (`policies`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

from lucidity.cluster.wire._shm.folders import _DIR_NAME

log = logging.getLogger("lucidity.cluster.wire._shm")

_FILE_NAME = re.compile(r"[ar][0-9a-f]{1,32}-[0-9a-f]{16}")
_MAX_DESCRIPTOR = 256
# A sanity bound on a descriptor's size (256 TiB).
_MAX_SIZE = 1 << 48


class ShmError(OSError):
    """A descriptor that is malformed, names something it may not, or whose
    file is gone or not what it claims."""


@dataclass(frozen=True)
class Descriptor:
    """A buffer in a file: `SHM_ROOT/dir/name`, `size` bytes."""

    dir: str
    name: str
    size: int

    def encode(self) -> bytes:
        return json.dumps(
            {"dir": self.dir, "name": self.name, "size": self.size},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, frame: Any) -> Descriptor:
        """Parse and validate a descriptor frame; `ShmError` if it is not one."""
        data = bytes(frame)
        if len(data) > _MAX_DESCRIPTOR:
            raise ShmError(f"shm descriptor of {len(data)} bytes")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            raise ShmError("shm descriptor is not JSON") from None
        if not isinstance(obj, dict) or set(obj) != {"dir", "name", "size"}:
            raise ShmError("shm descriptor lacks dir, name or size")
        d, name, size = obj["dir"], obj["name"], obj["size"]
        # Plain names only: no separator, no "..", nothing but these patterns.
        if not isinstance(d, str) or not _DIR_NAME.fullmatch(d):
            raise ShmError(f"shm descriptor names a bad directory {d!r}")
        if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
            raise ShmError(f"shm descriptor names a bad file {name!r}")
        if type(size) is not int or not 0 < size < _MAX_SIZE:
            raise ShmError(f"shm descriptor has a bad size {size!r}")
        return cls(d, name, size)


def _write(directory: str, prefix: str, data: memoryview) -> Descriptor | None:
    """Write `data` to a new file in `directory`; None if that fails."""
    name = f"{prefix}{os.getpid():x}-{uuid.uuid4().hex[:16]}"
    path = os.path.join(directory, name)
    try:
        fd = os.open(
            path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
    except OSError as exc:
        _fallback(exc)
        return None
    try:
        size = _write_all(fd, data)
    except OSError as exc:
        os.close(fd)
        _unlink(path)
        _fallback(exc)
        return None
    os.close(fd)
    return Descriptor(os.path.basename(directory), name, size)


def _write_all(fd: int, data: memoryview) -> int:
    # write(), not a store through a shared mapping: a full tmpfs is ENOSPC
    # here, where a mapping would take SIGBUS.
    view = data if data.format == "B" and data.ndim == 1 else data.cast("B")
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    return done


_warned = False


def _fallback(exc: OSError) -> None:
    global _warned
    level = (
        logging.WARNING if exc.errno == errno.ENOSPC and not _warned else logging.DEBUG
    )
    _warned = _warned or level == logging.WARNING
    log.log(level, "shared memory refused a buffer (%s): sent as a frame", exc)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
