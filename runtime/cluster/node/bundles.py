"""A node's code bundles: the cache on disk, and the fetches from clients.

It owns the bundle folder (`BundleCache`: content-addressed zips, 0700/0600,
written without following links, checked against their hash, evicted least
recently used past $LUCIDITY_CACHE_MAX_MB) and the jobs that wait for a
bundle the node lacks (`BundleFetches`: one FETCH per bundle to the client
that named it, the hash checked on arrival, its jobs failed if none comes in
time). Building a bundle stays in `lucidity.bundle` (engine-neutral: the Ray
engine ships the same zips). It may not start jobs or talk to workers: it
hands ready and failed jobs back to the daemon.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import zmq

from lucidity.cluster.node.scheduler import Task
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import EventLoop
from lucidity.errors import ClusterError

__all__ = [
    "BundleCache",
    "BundleFetches",
    "cache_max_bytes",
    "default_cache_dir",
]

log = logging.getLogger(__name__)

# A bundle asked of a client must come within this; else its jobs fail.
FETCH_TIMEOUT_S = 30.0


def default_cache_dir() -> str:
    """Where nodes keep fetched code bundles ($LUCIDITY_CACHE overrides)."""
    env = os.environ.get("LUCIDITY_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "lucidity", "bundles")


CACHE_MAX_ENV = "LUCIDITY_CACHE_MAX_MB"
DEFAULT_CACHE_MAX_BYTES = 1024 * 1024 * 1024
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def cache_max_bytes() -> int:
    """The bundle cache's bound ($LUCIDITY_CACHE_MAX_MB, default 1024)."""
    text = os.environ.get(CACHE_MAX_ENV)
    if not text:
        return DEFAULT_CACHE_MAX_BYTES
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise ClusterError(
            f"{CACHE_MAX_ENV}={text!r} is not a positive number of megabytes"
        )
    return int(mb * 1024 * 1024)


class BundleCache:
    """A node's bundles on disk, by digest: `<digest>.zip` in one folder.

    The files are the app's source: the folder is 0700 and each file 0600,
    whatever the umask. A bundle is written under a fresh random name
    (mkstemp: O_EXCL, so a planted symlink is never written through), then
    renamed over its final name (a rename replaces a link, never follows
    it); it is read with O_NOFOLLOW and checked against its hash once per
    run. Past `max_bytes` the least recently used bundles go first: those
    not used in this run by their mtime, then by their last use.
    """

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.stat(folder)
        if st.st_uid != os.geteuid():
            raise ClusterError(
                f"the bundle cache {folder} belongs to uid {st.st_uid}, not to this "
                "user: other users could change the code this node runs"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(folder, 0o700)
        # Bundles whose bytes were checked against their hash in this run,
        # with the order of their last use.
        self.used: dict[str, int] = {}
        self._tick = itertools.count()

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.zip"

    def has(self, digest: str) -> bool:
        """Whether the cache holds this bundle whole. A file that does not
        match its hash (a torn write, a damaged disk, tampering) or is not a
        plain file of ours is fetched again, never imported."""
        if digest in self.used:
            self.used[digest] = next(self._tick)
            return True
        try:
            fd = os.open(self.path(digest), _NOFOLLOW)
        except FileNotFoundError:
            return False
        except OSError as exc:
            why = (
                "is a symlink" if exc.errno == errno.ELOOP else f"cannot be read: {exc}"
            )
            log.warning("cached bundle %s %s; fetching it again", digest[:12], why)
            return False
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return False
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.fchmod(fd, 0o600)  # written by an older lucidity
            data = f.read()
        if hashlib.sha256(data).hexdigest() != digest:
            log.warning(
                "cached bundle %s does not match its hash; fetching it again",
                digest[:12],
            )
            return False
        self.used[digest] = next(self._tick)
        return True

    def put(self, digest: str, data: bytes, keep: Collection[str] = ()) -> Path:
        """Store a bundle (its hash already checked), then bring the cache
        back within its bound, never removing `digest` or those in `keep`."""
        path = self.path(digest)
        fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".tmp", dir=self.folder)
        try:
            with open(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.used[digest] = next(self._tick)
        self.evict({digest, *keep})
        return path

    def evict(self, keep: Collection[str] = ()) -> None:
        """Remove least recently used bundles until within the bound."""
        entries: list[tuple[tuple[int, float], str, int]] = []
        total = 0
        with os.scandir(self.folder) as it:
            for entry in it:
                digest, dot, ext = entry.name.partition(".")
                if ext != "zip" or not dot or len(digest) != 64:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_size
                used = self.used.get(digest)
                age = (0, st.st_mtime) if used is None else (1, float(used))
                entries.append((age, digest, st.st_size))
        if total <= self.max_bytes:
            return
        for _, digest, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if digest in keep:
                continue
            try:
                os.unlink(self.path(digest))
            except OSError:
                continue
            self.used.pop(digest, None)
            total -= size
            log.info("evicted bundle %s (%d bytes) from the cache", digest[:12], size)


class BundleFetches:
    """Jobs waiting for a bundle this node lacks, by digest.

    `send(ident, frames)` sends to a client without blocking; `ready(task)`
    queues a job whose bundle came; `fail(task, error)` fails one whose
    bundle did not; `keep()` names the bundles the cache may not evict (those
    a worker imports from, or a job waits for).
    """

    def __init__(
        self,
        cache: BundleCache,
        loop: EventLoop,
        node_id: str,
        send: Callable[[bytes, list[Any]], None],
        ready: Callable[[Task], None],
        fail: Callable[[Task, BaseException], None],
        keep: Callable[[], set[str]],
    ) -> None:
        self.cache = cache
        self.loop = loop
        self.node_id = node_id
        self.send = send
        self.ready = ready
        self.fail = fail
        self.keep = keep
        self.awaiting: dict[str, list[Task]] = {}

    def have(self, digest: str) -> bool:
        return self.cache.has(digest)

    def wait(self, task: Task, digest: str, ident: bytes) -> None:
        """Hold `task` until its bundle comes (asked of `ident` if first)."""
        waiting = self.awaiting.setdefault(digest, [])
        if not waiting:
            self._fetch(digest, ident)
        waiting.append(task)

    def drop(self, task: Task) -> bool:
        """Forget a waiting job (cancelled); False if it was not waiting."""
        for waiting in self.awaiting.values():
            if task in waiting:
                waiting.remove(task)
                return True
        return False

    def _fetch(self, digest: str, ident: bytes) -> None:
        """Ask the client `ident` for a bundle; its jobs fail if no bundle
        comes within FETCH_TIMEOUT_S (that client died, or cannot send it)."""
        head = p.encode(p.MsgType.FETCH, {"bundle": digest})
        try:
            self.send(ident, [head])
        except zmq.ZMQError as exc:
            log.warning("cannot ask a client for bundle %s: %s", digest[:12], exc)

        def expired() -> None:
            if self.awaiting.get(digest) is waiting:
                self._fail_awaiting(
                    digest, f"did not arrive within {FETCH_TIMEOUT_S:.0f} s"
                )

        waiting = self.awaiting[digest]
        self.loop.call_later(FETCH_TIMEOUT_S, expired)

    def _fail_awaiting(self, digest: str, why: str) -> None:
        """Fail every job waiting for bundle `digest`."""
        log.warning("bundle %s %s", digest[:12], why)
        for task in self.awaiting.pop(digest, []):
            self.fail(
                task,
                ClusterError(
                    f"the code bundle {digest[:12]} of {task.header.get('target')} "
                    f"{why} (node {self.node_id})"
                ),
            )

    def on_bundle(self, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
        """A client's BUNDLE: cache it if asked for and whole, then queue
        its jobs; else fail them, saying why."""
        digest = str(header["bundle"])
        if digest not in self.awaiting:
            return  # not asked for (or already here): ignore
        if header.get("missing"):
            self._fail_awaiting(digest, "is not known to the client asked for it")
            return
        data = payload[0].bytes if payload else b""
        if hashlib.sha256(data).hexdigest() != digest:
            self._fail_awaiting(digest, "sent by the client does not match its hash")
            return
        try:
            self.cache.put(digest, data, self.keep())
        except OSError as exc:
            self._fail_awaiting(digest, f"could not be cached: {exc}")
            return
        waiting = self.awaiting.pop(digest)
        log.info("cached bundle %s (%d bytes)", digest[:12], len(data))
        for task in waiting:
            self.ready(task)
