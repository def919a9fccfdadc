"""Shared memory's policies: which buffers of one payload travel as files.

It owns `Outbound` (a buffer of at least THRESHOLD bytes, going to this
host, is written to a file and sent as its descriptor; an echoed argument is
sent back as its own descriptor), `Inbound` (which descriptors a receiver
accepts, how it maps them, which files it unlinks) and `OwnFiles` (a
client's argument files, by job, and its directory). `protocol.dumps_payload`
and `protocol.loads_payload` apply these; this module may not touch a socket.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable, Collection
from typing import Any

from lucidity.cluster.wire._shm import folders, mapping
from lucidity.cluster.wire._shm.descriptors import Descriptor, ShmError, _unlink, _write
from lucidity.cluster.wire._shm.folders import make_dir, remove_dir
from lucidity.cluster.wire._shm.mapping import _address, _map, _start_reaper

# Buffers this large or larger go through shared memory; below it a frame is
# cheaper than a file (open, write, map, unlink: tens of microseconds).
THRESHOLD = 1 << 20


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
        if not folders.SHM_ROOT:
            raise ShmError("shared memory is turned off here")
        desc = Descriptor.decode(frame)
        if self.dirs is not None and desc.dir not in self.dirs:
            raise ShmError(f"shm descriptor names an unexpected directory {desc.dir}")
        return desc

    def map(self, frame: Any) -> mmap.mmap:
        desc = self._check(frame)
        path = os.path.join(folders.SHM_ROOT, desc.dir, desc.name)
        unlink = self.unlink and path not in self.keep
        if self.writable and mapping._reaper_pid != os.getpid():
            _start_reaper()
        mapped = _map(folders.SHM_ROOT, desc, self.writable, unlink)
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
        path = os.path.join(folders.SHM_ROOT, desc.dir, desc.name)
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
