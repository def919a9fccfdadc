"""Which sources are known to hold no job: the one thing a stamp cannot say.

A source with jobs has a generated file whose stamp says whether it is
current. A source that mentions `lucidity` but holds no job (a `main.py`
calling stubs, say) has no generated file, so without a memory every run
would parse it again. This remembers the sha256 of such sources (those that
gave no job and no error) in one file per output-rules fingerprint, as black
keeps its cache: in `$LUCIDITY_GEN_CACHE_DIR`, else
`$XDG_CACHE_HOME/lucidity-gen`, else `~/.cache/lucidity-gen`. It is only a
cache: unreadable or unwritable, it is ignored and everything is parsed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from lucidity.codegen import rules

__all__ = ["cache_dir", "load", "save"]

# Enough for any one project's files many times over; beyond it the oldest go.
_MAX_ENTRIES = 50_000
_HASH = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> str:
    explicit = os.environ.get("LUCIDITY_GEN_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "lucidity-gen")


def _path() -> str:
    return os.path.join(cache_dir(), f"no-jobs-{rules.fingerprint()}.txt")


def load() -> list[str]:
    """The remembered hashes, oldest first."""
    try:
        with open(_path(), encoding="ascii") as f:
            return [line for line in f.read().split() if _HASH.fullmatch(line)]
    except (OSError, UnicodeDecodeError):
        return []


def save(known: list[str], seen: Iterable[str]) -> None:
    """Remember `seen` after `known` (what `load` gave), if anything is new."""
    present = set(known)
    new = [h for h in dict.fromkeys(seen) if h not in present]
    if not new:
        return
    from lucidity.codegen.write import write_atomic

    entries = (known + new)[-_MAX_ENTRIES:]
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        write_atomic(_path(), "".join(f"{h}\n" for h in entries).encode("ascii"))
    except OSError:
        pass  # a cache that cannot be written is no cache
