"""Shared memory's mappings: a descriptor's file mapped back into memory.

It owns mapping a file a descriptor names, after checking it is what the
descriptor says (a plain file of this user, of that size, in a private
directory): read-only and shared for a job's arguments, private and writable
for a result; the reaper thread that closes a result's file descriptor off
the caller's thread; and a buffer's address (to see an echoed argument). It
may not write files or choose which buffers travel as files (`policies`).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import queue
import stat
import sys
import threading
import weakref
from typing import Any

from lucidity.cluster.wire._shm.descriptors import Descriptor, ShmError
from lucidity.cluster.wire._shm.folders import _DIR_FLAGS, _private_dir


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer: Any = None
_release_buffer: Any = None
try:
    _get_buffer = ctypes.pythonapi.PyObject_GetBuffer
    _get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
    _get_buffer.restype = ctypes.c_int
    _release_buffer = ctypes.pythonapi.PyBuffer_Release
    _release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
    _release_buffer.restype = None
except AttributeError:  # not CPython: no echo shortcut, still correct
    _get_buffer = None


def _address(obj: object) -> int | None:
    """Where `obj`'s (contiguous) buffer starts in memory, if we can tell."""
    if _get_buffer is None:
        return None
    view = _PyBuffer()
    try:
        _get_buffer(obj, ctypes.byref(view), 0)  # PyBUF_SIMPLE
    except (BufferError, TypeError):
        return None
    try:
        return view.buf or None
    finally:
        _release_buffer(ctypes.byref(view))


# Before 3.13 each mapping also holds a duplicate of its file's descriptor,
# until the buffer is released.
_MAP_KW: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def _map(root: str, desc: Descriptor, writable: bool, unlink: bool) -> mmap.mmap:
    """Map the file `desc` names, checking it is what the descriptor says."""
    try:
        dfd = os.open(os.path.join(root, desc.dir), _DIR_FLAGS)
    except OSError as exc:
        raise ShmError(f"shm directory {desc.dir}: {exc.strerror}") from None
    try:
        if not _private_dir(os.fstat(dfd)):
            raise ShmError(f"shm directory {desc.dir} is not private to this user")
        try:
            fd = os.open(
                desc.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
            )
        except OSError as exc:
            raise ShmError(f"shm file {desc.dir}/{desc.name}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise ShmError(f"shm file {desc.dir}/{desc.name} is not ours")
            if st.st_size != desc.size:
                raise ShmError(
                    f"shm file {desc.dir}/{desc.name} holds {st.st_size} bytes, "
                    f"not {desc.size}"
                )
            access = mmap.ACCESS_COPY if writable else mmap.ACCESS_READ
            mapped = mmap.mmap(fd, desc.size, access=access, **_MAP_KW)
        except BaseException:
            os.close(fd)
            raise
        if writable:
            # A result: whoever drops the last reference to an unlinked file
            # frees its pages, milliseconds for a large one (4 ms per 64 MiB).
            # Our descriptor outlives the mapping and is closed by the reaper
            # thread, so the thread dropping the result does not pay.
            weakref.finalize(mapped, _close_later, fd).atexit = False
        else:
            os.close(fd)
        if unlink:
            try:
                os.unlink(desc.name, dir_fd=dfd)
            except OSError:
                pass
        return mapped
    finally:
        os.close(dfd)


_reaper: queue.SimpleQueue[int] | None = None
_reaper_pid = 0
_reaper_lock = threading.Lock()


def _start_reaper() -> None:
    global _reaper, _reaper_pid
    with _reaper_lock:
        if _reaper_pid != os.getpid():
            _reaper = queue.SimpleQueue()
            threading.Thread(
                target=_reap, args=(_reaper,), name="lucidity-shm-reaper", daemon=True
            ).start()
            _reaper_pid = os.getpid()


def _reap(fds: queue.SimpleQueue[int]) -> None:
    while True:
        os.close(fds.get())


def _close_later(fd: int) -> None:
    if _reaper is None or _reaper_pid != os.getpid():
        os.close(fd)  # forked since: the reaper thread is not ours
    else:
        _reaper.put(fd)
