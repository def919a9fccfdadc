"""Jobs of the shared-memory tests: large buffers in and out.

A `pickle.PickleBuffer` argument arrives in the job as the buffer object it
travelled as (a mapping of the caller's file, or a frame's memory), so these
jobs work on any buffer, with or without numpy.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from pickle import PickleBuffer
from typing import Any

from lucidity import job


@job
def echo(value: Any) -> Any:
    return value


@job
def echo_buffer(value: Any) -> Any:
    """A raw buffer argument handed back as it came (no copy)."""
    return PickleBuffer(value)


@job
def inspect(value: Any) -> tuple[str, bool, str]:
    """(sha256, writable?, type name) of a buffer argument."""
    view = memoryview(value)
    return hashlib.sha256(view).hexdigest(), not view.readonly, type(value).__name__


@job
def fill(size: int, byte: int) -> Any:
    """A new buffer of `size` bytes, all `byte`, made by the worker."""
    return PickleBuffer(bytearray([byte]) * size)


@job
def die_once(marker: str, value: Any) -> str:
    """SIGKILL this worker on the first run (leaving `marker`), then hash `value`."""
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return hashlib.sha256(memoryview(value)).hexdigest()


@job
def pieces(count: int, size: int) -> list[Any]:
    """`count` buffers of `size` bytes, the i-th all byte i % 256: a result
    of count + 1 frames."""
    return [PickleBuffer(bytearray([i % 256]) * size) for i in range(count)]


@job
def digests(values: list[Any]) -> list[str]:
    """The sha256 of each buffer argument."""
    return [hashlib.sha256(memoryview(v)).hexdigest() for v in values]
