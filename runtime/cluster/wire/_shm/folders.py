"""Shared memory's directories: where buffers' files live, and who holds them.

It owns SHM_ROOT (/dev/shm, or $LUCIDITY_SHM_ROOT; "" turns the path off),
this host's boot id, the private (0700) directories a client or a node makes
there (and the embedded cluster's ipc socket folders under /tmp), the flock
each owner holds on its own, the sweep that removes those of dead owners,
and the checks that a directory named by a peer is one of ours. It may not
write, map or unlink buffer files (`descriptors`, `mapping`, `policies`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid

log = logging.getLogger("lucidity.cluster.wire._shm")

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
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


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
