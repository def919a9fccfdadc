"""Code shipping: the source of a job's top-level package as a content-addressed zip.

The client builds a bundle once per package and process (sorted names, fixed
timestamps: the same source gives the same bytes and the same hash) and names
it in every SUBMIT. A node that lacks the hash fetches the bytes from the
client, checks the hash, caches the zip on disk (`BundleCache`) and runs the
job in a worker that imports from that zip and serves no other bundle.
Third-party packages and the standard library are not shipped: nodes must
have them installed.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import itertools
import logging
import os
import stat
import sysconfig
import tempfile
import zipfile
import zipimport
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from lucidity.errors import ClusterError

__all__ = [
    "Bundle",
    "BundleCache",
    "BundleTooLargeError",
    "build_bundle",
    "cache_max_bytes",
    "DEFAULT_MAX_BUNDLE_BYTES",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BUNDLE_BYTES = 50 * 1024 * 1024
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules"}


class BundleTooLargeError(ClusterError):
    """The job's package is too big to ship (names the package and the limit)."""


@dataclass(frozen=True)
class Bundle:
    package: str
    digest: str  # sha256 hex of `data`
    data: bytes


def _installed_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return [Path(r).resolve() for r in roots]


def _is_installed(path: Path) -> bool:
    return any(path.is_relative_to(root) for root in _installed_roots()) or (
        "site-packages" in path.parts or "dist-packages" in path.parts
    )


def max_bundle_bytes() -> int:
    text = os.environ.get("LUCIDITY_MAX_BUNDLE_MB")
    if not text:
        return DEFAULT_MAX_BUNDLE_BYTES
    try:
        return int(float(text) * 1024 * 1024)
    except ValueError:
        raise ClusterError(
            f"LUCIDITY_MAX_BUNDLE_MB={text!r} is not a number of megabytes"
        ) from None


def build_bundle(module: str, limit: int | None = None) -> Bundle | None:
    """The bundle of `module`'s top-level package, or None when it is not ours
    to ship (installed, built in, or not found here)."""
    top = module.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    loader = spec.loader
    if isinstance(loader, zipimport.zipimporter):
        # A job running from a bundle ships that same bundle on to its children.
        archive = Path(loader.archive)
        if archive.suffix != ".zip":
            return None
        data = archive.read_bytes()
        return Bundle(top, hashlib.sha256(data).hexdigest(), data)
    origin = Path(spec.origin).resolve()
    if _is_installed(origin) or origin.suffix != ".py":
        return None
    files: list[tuple[str, Path]] = []
    if spec.submodule_search_locations:
        root = origin.parent
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(
                d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")
            )
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = Path(dirpath) / name
                    arc = (Path(top) / path.relative_to(root)).as_posix()
                    files.append((arc, path))
    else:
        files.append((f"{top}.py", origin))
    limit = max_bundle_bytes() if limit is None else limit
    size = sum(path.stat().st_size for _, path in files)
    if size > limit:
        raise BundleTooLargeError(
            f"the source of package {top!r} ({size / 2**20:.1f} MiB in {len(files)} "
            f"files) is over the {limit / 2**20:.3g} MiB bundle limit: move data "
            "files out of the package, install the package on every node, or raise "
            "LUCIDITY_MAX_BUNDLE_MB"
        )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, path in files:
            info = zipfile.ZipInfo(arc, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    data = buf.getvalue()
    return Bundle(top, hashlib.sha256(data).hexdigest(), data)


# ---- a node's cache of fetched bundles -------------------------------------

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
