"""Code shipping: the source of a job's top-level package as a content-addressed zip.

The client builds a bundle once per package and process (sorted names, fixed
timestamps: the same source gives the same bytes and the same hash) and names
it in every SUBMIT. A node that lacks the hash fetches the bytes from the
client, checks the hash, caches the zip on disk
(`lucidity.cluster.node.bundles.BundleCache`) and runs the
job in a worker that imports from that zip and serves no other bundle.
Third-party packages and the standard library are not shipped: nodes must
have them installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import sysconfig
import zipfile
import zipimport
from dataclasses import dataclass
from pathlib import Path

from lucidity.errors import ClusterError

__all__ = [
    "Bundle",
    "BundleTooLargeError",
    "build_bundle",
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
