"""Same-host shared memory for large out-of-band buffers (issue #5).

A pickle-5 buffer of at least THRESHOLD bytes, going to a process on this
host, is written to a file under SHM_ROOT (/dev/shm) and travels as a small
descriptor frame instead of its bytes; the receiver maps the file, as Ray's
object store does. This module owns the shared-memory side of that:

* the directories, directly under SHM_ROOT, mode 0700: a client's own
  (`lucidity-c<pid>-<random>`, removed when the client closes) and a node's
  (`lucidity-n<node id>-<random>`, removed when the node stops); the files in
  them are created exclusively, mode 0600;
* the descriptor (`{"dir", "name", "size"}` as JSON, never a pickle) and its
  validation: a descriptor comes off the wire, so it may only name a plain
  file, owned by this user, inside a directory the receiver expects;
* writing a buffer out (None when /dev/shm is missing or full: the caller
  sends the bytes as a frame instead) and mapping one back: read-only for a
  job's arguments, private and writable for a result;
* `Outbound` and `Inbound`, the policies that `protocol.dumps_payload` and
  `protocol.loads_payload` apply to one payload.

Who removes what:

* argument files are written by the client (an app: into its own directory;
  a job calling jobs: into its node's directory) and unlinked by it when the
  job finishes, however it finishes, or when the client closes; until then a
  retry re-sends the same descriptors to another node;
* result files are written by the worker into its node's directory and
  unlinked by the client right after mapping them (or unread, when the job is
  already over); an echoed argument is not copied: its descriptor points back
  at the argument file;
* on SIGKILL: a killed app leaves its `lucidity-c*` directory with the
  argument files of its unfinished jobs; a killed node leaves its
  `lucidity-n*` directory with the results its clients had not picked up; a
  killed worker leaves files only inside its node's directory, which goes
  when the node stops. A result whose client never picks it up (the client
  died) also waits there for the node to stop. Each directory's owner holds
  an flock on it, which the kernel drops when the owner dies, so the next
  lucidity node or client to make a directory on this host removes the ones
  nobody holds (`_sweep`); until then they use memory.

The embedded cluster's folder of ipc sockets (`lucidity-s<pid>-<random>`,
under /tmp: `make_socket_dir`) is held and swept the same way, so neither a
SIGKILLed app nor a fork child that `os._exit`s leaves one behind for good.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import mmap
import os
import queue
import re
import shutil
import stat
import sys
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NODE_DIR_ENV",
    "ROOT_ENV",
    "SHM_ROOT",
    "THRESHOLD",
    "Descriptor",
    "Inbound",
    "Outbound",
    "OwnFiles",
    "ShmError",
    "boot_id",
    "make_dir",
    "node_dir_from_env",
    "remove_dir",
    "usable_dir",
]

log = logging.getLogger(__name__)

# Buffers this large or larger go through shared memory; below it a frame is
# cheaper than a file (open, write, map, unlink: tens of microseconds).
THRESHOLD = 1 << 20
ROOT_ENV = "LUCIDITY_SHM_ROOT"
# Set by a node for its workers: the node's directory (where results go).
NODE_DIR_ENV = "LUCIDITY_NODE_SHM"


def _root() -> str:
    value = os.environ.get(ROOT_ENV)
    if value is None:
        return "/dev/shm"
    return os.path.normpath(value) if value else ""


# Where the directories are made; LUCIDITY_SHM_ROOT="" turns the path off.
SHM_ROOT = _root()

_DIR_NAME = re.compile(r"lucidity-[cn][0-9a-f]{1,32}-[0-9a-f]{12}")
# The embedded cluster's socket folders: ipc paths are short-limited (~107
# bytes), so they live under /tmp, not under SHM_ROOT.
SOCKET_ROOT = "/tmp"
_SOCKET_DIR_NAME = re.compile(r"lucidity-s[0-9]{1,10}-[0-9a-f]{12}")
_FILE_NAME = re.compile(r"[ar][0-9a-f]{1,32}-[0-9a-f]{16}")
_MAX_DESCRIPTOR = 256
# A sanity bound on a descriptor's size (256 TiB).
_MAX_SIZE = 1 << 48
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


class ShmError(OSError):
    """A descriptor that is malformed, names something it may not, or whose
    file is gone or not what it claims."""


_UNKNOWN = object()
_boot_id: object = _UNKNOWN


def boot_id() -> str | None:
    """This host's boot id: equal for two processes iff they share a kernel."""
    global _boot_id
    if _boot_id is _UNKNOWN:
        try:
            with open(_BOOT_ID) as f:
                _boot_id = f.read().strip() or None
        except OSError:
            _boot_id = None
    return _boot_id  # type: ignore[return-value]


# ---- directories ----------------------------------------------------------


# The directories this process made, each with an open descriptor holding an
# flock on it: the kernel drops the lock when the process dies, however it
# dies, which is how `_sweep` tells a dead owner's directory from a live one.
_locks: dict[str, int] = {}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_dir(kind: str, tag: str) -> str | None:
    """A new private (0700) directory under SHM_ROOT, or None if there is none.

    `kind` is "c" (a client's) or "n" (a node's); `tag` a hex or decimal id.
    Directories left by lucidity processes that were killed are removed first.
    """
    if not SHM_ROOT or boot_id() is None:
        return None
    _sweep()
    try:
        return _locked_dir(SHM_ROOT, f"lucidity-{kind}{tag}")
    except OSError as exc:
        log.info("no shared memory (%s): large buffers go as frames", exc)
        return None


def make_socket_dir() -> str:
    """A new private (0700) folder under SOCKET_ROOT for an embedded
    cluster's ipc sockets, held as `make_dir`'s are; folders of processes
    that died without removing theirs are removed first. OSError if none."""
    root = SOCKET_ROOT if os.path.isdir(SOCKET_ROOT) else tempfile.gettempdir()
    _sweep(root, _SOCKET_DIR_NAME)
    return _locked_dir(root, f"lucidity-s{os.getpid()}")


def _locked_dir(root: str, stem: str) -> str:
    """Make `root/stem-<random>` (0700), held by an flock of this process."""
    rand = uuid.uuid4().hex[:12]
    path = os.path.join(root, f"{stem}-{rand}")
    # Made under a name `_sweep` ignores, locked, then renamed: never seen
    # unlocked under its real name.
    new = os.path.join(root, f".lucidity-new-{rand}")
    os.mkdir(new, 0o700)
    try:
        os.chmod(new, 0o700)  # whatever the umask
        fd = os.open(new, _DIR_FLAGS)
    except OSError:
        shutil.rmtree(new, ignore_errors=True)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(new, path)
    except OSError:
        os.close(fd)
        shutil.rmtree(new, ignore_errors=True)
        raise
    _locks[path] = fd
    return path


def remove_dir(path: str | None) -> None:
    """Remove a directory made by `make_dir` (or `make_socket_dir`) and
    every file left in it."""
    name = os.path.basename(path or "")
    if path and (_DIR_NAME.fullmatch(name) or _SOCKET_DIR_NAME.fullmatch(name)):
        shutil.rmtree(path, ignore_errors=True)
        fd = _locks.pop(path, None)
        if fd is not None:
            os.close(fd)


def _sweep(root: str | None = None, pattern: re.Pattern[str] = _DIR_NAME) -> None:
    """Remove the directories of lucidity processes that died without
    cleaning up (SIGKILL): ours, under `root` (SHM_ROOT), and unlocked."""
    root = SHM_ROOT if root is None else root
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        if not pattern.fullmatch(name) or path in _locks:
            continue
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError:
            continue
        try:
            if not _private_dir(os.fstat(fd)):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            log.info("removing %s, left by a lucidity process that was killed", path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _private_dir(st: os.stat_result) -> bool:
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and stat.S_IMODE(st.st_mode) & 0o077 == 0
    )


def usable_dir(path: object) -> bool:
    """Whether `path` (as a node advertises it) is a lucidity directory under
    this process's SHM_ROOT, private to this user, that we can use."""
    if not isinstance(path, str) or not SHM_ROOT:
        return False
    if os.path.dirname(path) != SHM_ROOT:
        return False
    if not _DIR_NAME.fullmatch(os.path.basename(path)):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return _private_dir(st) and os.access(path, os.R_OK | os.W_OK | os.X_OK)


_node_dir: object = _UNKNOWN


def node_dir_from_env() -> str | None:
    """In a worker: its node's directory, if usable (checked once)."""
    global _node_dir
    if _node_dir is _UNKNOWN:
        path = os.environ.get(NODE_DIR_ENV)
        _node_dir = path if path and usable_dir(path) else None
    return _node_dir  # type: ignore[return-value]


# ---- descriptors -------------------------------------------------------------


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


# ---- the address of a buffer (to see an echoed argument) -------------------


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


# ---- mapping --------------------------------------------------------------------

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


# ---- policies -----------------------------------------------------------------


class Outbound:
    """Where the large buffers of one payload may go.

    `directory()` gives the directory for new files (None: no shm, use
    frames); `echo` lists buffers this process mapped from descriptors, which are sent back
    as the same descriptor when a result is that very memory. Files written
    are listed in `written`: the caller owns them.
    """

    __slots__ = ("directory", "prefix", "echo", "written")

    def __init__(
        self,
        directory: Callable[[], str | None],
        prefix: str,
        echo: Inbound | None = None,
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        # The Inbound, not just its list: it keeps those mappings alive, so
        # their addresses cannot be reused by another buffer meanwhile.
        self.echo = echo
        self.written: list[str] = []

    def place(self, raw: memoryview) -> bytes | None:
        """The descriptor frame standing for `raw`, or None to send it as is."""
        size = raw.nbytes
        if size < THRESHOLD:
            return None
        if self.echo is not None and self.echo.mapped:
            addr = _address(raw)
            for start, length, frame in self.echo.mapped:
                if start == addr and length == size:
                    return frame
        directory = self.directory()
        if directory is None:
            return None
        desc = _write(directory, self.prefix, raw)
        if desc is None:
            return None
        self.written.append(os.path.join(directory, desc.name))
        return desc.encode()


class Inbound:
    """How the descriptors of one received payload are mapped.

    `dirs`: the directory names a descriptor may name (None: any lucidity
    directory under SHM_ROOT that is private to this user, as a worker takes
    arguments from any client of its host). `writable`: a private, writable
    mapping (results) rather than a read-only shared one (arguments).
    `unlink`: unlink each file once mapped, unless its path is in `keep`
    (files the receiver itself still owns). Mapped buffers are recorded in
    `mapped` as (address, size, descriptor frame).
    """

    __slots__ = ("dirs", "writable", "unlink", "keep", "mapped", "_maps")

    def __init__(
        self,
        dirs: Collection[str] | None = None,
        writable: bool = False,
        unlink: bool = False,
        keep: Collection[str] = (),
    ) -> None:
        self.dirs = dirs
        self.writable = writable
        self.unlink = unlink
        self.keep = keep
        self.mapped: list[tuple[int, int, bytes]] = []
        # Holds the mappings for as long as `mapped` may be compared with.
        self._maps: list[mmap.mmap] = []

    def _check(self, frame: Any) -> Descriptor:
        if not SHM_ROOT:
            raise ShmError("shared memory is turned off here")
        desc = Descriptor.decode(frame)
        if self.dirs is not None and desc.dir not in self.dirs:
            raise ShmError(f"shm descriptor names an unexpected directory {desc.dir}")
        return desc

    def map(self, frame: Any) -> mmap.mmap:
        desc = self._check(frame)
        path = os.path.join(SHM_ROOT, desc.dir, desc.name)
        unlink = self.unlink and path not in self.keep
        if self.writable and _reaper_pid != os.getpid():
            _start_reaper()
        mapped = _map(SHM_ROOT, desc, self.writable, unlink)
        addr = _address(mapped)
        if addr is not None:
            self.mapped.append((addr, desc.size, bytes(frame)))
            self._maps.append(mapped)
        return mapped

    def discard(self, frame: Any) -> None:
        """Unlink, unread, the file a descriptor names (if ours to unlink)."""
        if not self.unlink:
            return
        try:
            desc = self._check(frame)
        except ShmError:
            return
        path = os.path.join(SHM_ROOT, desc.dir, desc.name)
        if path not in self.keep:
            _unlink(path)


class OwnFiles:
    """The argument files of a client's jobs, by job, and its directory."""

    def __init__(self, tag: str, shared_dir: str | None) -> None:
        self._tag = tag
        # A client inside a worker writes into its node's directory (gone when
        # the node stops, whatever becomes of the worker); an app, into its own.
        self._dir = shared_dir
        self._owned = shared_dir is None
        self._made = shared_dir is not None
        self._lock = threading.Lock()
        self.live: set[str] = set()

    def directory(self) -> str | None:
        if not self._made:
            with self._lock:
                if not self._made:
                    self._dir = make_dir("c", self._tag)
                    self._made = True
        return self._dir

    def name(self) -> str | None:
        return os.path.basename(self._dir) if self._dir else None

    def adopt(self, paths: list[str]) -> None:
        self.live.update(paths)

    def release(self, paths: list[str]) -> None:
        for path in paths:
            self.live.discard(path)
            _unlink(path)

    def close(self) -> None:
        self.release(list(self.live))
        if self._owned:
            remove_dir(self._dir)
