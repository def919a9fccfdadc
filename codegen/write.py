"""Plan, diff and apply: what `lucidity-gen` would write or remove, then doing it.

`plan` reads everything and writes nothing; it returns every change and every
error, so that a run with any error writes nothing at all. `apply` then writes
each file atomically (a temporary file in the same folder, `os.replace`d over
the target), so a reader never sees half a module. Only files carrying our
header are ever overwritten or removed.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import enum
import hashlib
import multiprocessing
import multiprocessing.context
import os
import sys
import tempfile
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from lucidity.codegen import discover, rules
from lucidity.codegen.errors import SourceError

__all__ = ["DEFAULT_SUFFIX", "Action", "Change", "Plan", "apply", "plan"]

DEFAULT_SUFFIX = "_jobs"


class Action(enum.Enum):
    WRITE = "write"
    REMOVE = "remove"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Change:
    """One generated file: its current bytes (None: absent) and its new ones."""

    path: str
    action: Action
    old: bytes | None
    new: bytes | None

    def diff(self) -> str:
        """A unified diff from the current file to the planned one."""
        if self.action is Action.UNCHANGED:
            return ""
        return "".join(
            difflib.unified_diff(
                _lines(self.old),
                _lines(self.new),
                fromfile=f"a/{self.path}" if self.old is not None else "/dev/null",
                tofile=f"b/{self.path}" if self.new is not None else "/dev/null",
            )
        )


def _lines(data: bytes | None) -> list[str]:
    return [] if data is None else data.decode("utf-8", "replace").splitlines(True)


@dataclass(frozen=True)
class Plan:
    """Everything one run would do, and every reason it cannot."""

    changes: tuple[Change, ...]
    errors: tuple[SourceError, ...]
    # sha256 of every source read that mentions lucidity yet holds no job
    # (and no error): what `cache` remembers for the next run.
    no_jobs: tuple[str, ...] = ()

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action is action)

    @property
    def stale(self) -> bool:
        return any(change.action is not Action.UNCHANGED for change in self.changes)

    def diff(self) -> str:
        return "".join(change.diff() for change in self.changes)


def plan(
    paths: Sequence[str],
    suffix: str = DEFAULT_SUFFIX,
    workers: int | None = None,
    no_jobs: Collection[str] = (),
) -> Plan:
    """Read `paths` (files or folders) and decide every generated file's fate.

    A generated file whose stamp matches its source and these output rules is
    current and its source is not parsed, nor is a source whose sha256 is in
    `no_jobs` (known to hold no job); the rest are generated, over `workers`
    processes (default: one per CPU, when there is enough to do).
    """
    changes: dict[str, Change] = {}
    errors: list[tuple[int, SourceError]] = []
    todo: list[_Work] = []
    known = no_jobs if isinstance(no_jobs, (set, frozenset)) else set(no_jobs)
    jobless: list[str] = []
    for index, path in enumerate(discover.iter_files(paths)):
        try:
            data = _read(path)
        except OSError as exc:
            errors.append((index, _unreadable(path, exc)))
            continue
        if data is None:  # gone since the walk saw it
            continue
        generated_from = discover.generated_source(data)
        if generated_from is not None:
            # One of ours is never an input; it goes when its source has gone.
            source = os.path.join(
                os.path.dirname(path), os.path.basename(generated_from)
            )
            if not os.path.exists(source):
                _add(changes, Change(path, Action.REMOVE, data, None))
            continue
        target = _sibling(path, suffix)
        try:
            old = _read(target)
        except OSError as exc:
            errors.append((index, _unreadable(target, exc)))
            continue
        ours = old is not None and discover.generated_source(old) is not None
        digest = hashlib.sha256(data).hexdigest() if discover.MARKER in data else ""
        if digest and digest in known:
            jobless.append(digest)
            digest = ""  # as good as a file without the marker
        if digest:
            work = _Work(index, path, data, digest, target, old, ours, suffix)
            if work.current():
                _add(changes, Change(target, Action.UNCHANGED, old, old))
            else:
                todo.append(work)
        elif ours and old is not None and _names_source(old, path):
            # The source has no jobs any more: its stubs would be dangling.
            _add(changes, Change(target, Action.REMOVE, old, None))
    for work, (new, found) in zip(todo, _generate_all(todo, workers), strict=True):
        errors.extend((work.index, error) for error in found)
        if new is None and not found:
            jobless.append(work.digest)
        if new is None:
            if (
                work.ours
                and work.old is not None
                and _names_source(work.old, work.path)
            ):
                _add(changes, Change(work.target, Action.REMOVE, work.old, None))
            continue
        if work.old is not None and not work.ours:
            errors.append(
                (
                    work.index,
                    SourceError(
                        work.target,
                        1,
                        1,
                        f"exists and was not generated by lucidity-gen, so the stubs "
                        f"of {work.path} cannot be written there; rename it or choose "
                        "another --suffix",
                    ),
                )
            )
            continue
        action = Action.UNCHANGED if work.old == new else Action.WRITE
        _add(changes, Change(work.target, action, work.old, new))
    ordered = tuple(changes[key] for key in sorted(changes))
    errors.sort(key=lambda item: item[0])  # stable: each file's in its order
    return Plan(ordered, tuple(error for _, error in errors), tuple(jobless))


def _unreadable(path: str, exc: OSError) -> SourceError:
    return SourceError(path, 1, 1, f"cannot read: {exc.strerror}")


@dataclass(frozen=True)
class _Work:
    """A source that may have jobs, and the generated file beside it."""

    index: int  # in walk order, to report errors in that order
    path: str
    data: bytes
    digest: str  # sha256 of data, hex
    target: str
    old: bytes | None
    ours: bool
    suffix: str

    def current(self) -> bool:
        """Whether the stubs on disk are what this run would write, known from
        their stamp alone."""
        if not self.ours or self.old is None:
            return False
        try:
            _, source_path = discover.module_name(self.path)
        except discover.ModuleNameError:
            return False
        return rules.is_current(
            self.old,
            source_path,
            rules.regenerate_command(source_path, self.suffix, DEFAULT_SUFFIX),
            self.digest,
        )


# Below this much source, starting worker processes costs more than it saves.
_POOL_MIN_BYTES = 256 * 1024


def _generate_all(
    todo: list[_Work], workers: int | None
) -> list[tuple[bytes | None, tuple[SourceError, ...]]]:
    """Each work's new stubs (None: no jobs) and errors, in `todo`'s order."""
    args = [(w.path, w.data, w.suffix) for w in todo]
    if workers is None:
        enough = sum(len(w.data) for w in todo) >= _POOL_MIN_BYTES
        workers = _cpus() if enough else 1
    workers = min(workers, len(todo))
    if workers <= 1:
        return [_generate(*a) for a in args]
    # Imported before the fork, so that each worker has them already.
    import lucidity.codegen.collect
    import lucidity.codegen.render  # noqa: F401

    # Largest first, so that no worker is left with a big file at the end.
    order = sorted(range(len(args)), key=lambda i: -len(args[i][1]))
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=_context()
    ) as pool:
        futures = {i: pool.submit(_generate, *args[i]) for i in order}
        return [futures[i].result() for i in range(len(args))]


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _context() -> multiprocessing.context.BaseContext:
    # A forked worker has libcst, jinja2 and black imported already; a spawned
    # one (or one of Python 3.14's default forkserver on Linux) imports them
    # again, ~0.5 s each. fork is safe only with no other thread, and is asked
    # for by name, since it is no longer the default from 3.14.
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _add(changes: dict[str, Change], change: Change) -> None:
    changes.setdefault(os.path.realpath(change.path), change)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _sibling(path: str, suffix: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}{suffix}{ext or '.py'}"


def _names_source(generated: bytes, path: str) -> bool:
    source = discover.generated_source(generated)
    return source is not None and os.path.basename(source) == os.path.basename(path)


def _generate(
    path: str, data: bytes, suffix: str
) -> tuple[bytes | None, tuple[SourceError, ...]]:
    """The new stub module for `path` (None: no jobs, or errors) and its errors.

    Run in a worker process for many files: it takes and returns plain data.
    """
    # Imported here: a run where everything is current never loads libcst,
    # jinja2 or black (a third of a second).
    from lucidity.codegen.collect import collect
    from lucidity.codegen.render import render

    try:
        module, source_path = discover.module_name(path)
    except discover.ModuleNameError as exc:
        # Only an error if the file does hold jobs: find out first.
        collected = collect(data, path, "module", "module.py", "")
        if collected.module is not None:
            return None, (*collected.errors, SourceError(path, 1, 1, str(exc)))
        return None, collected.errors
    command = rules.regenerate_command(source_path, suffix, DEFAULT_SUFFIX)
    collected = collect(data, path, module, source_path, command)
    if collected.module is None:
        return None, collected.errors
    return render(collected.module).encode("utf-8"), collected.errors


def apply(plan: Plan) -> None:
    """Write and remove what `plan` says; each write is atomic."""
    mode = _file_mode()
    for change in plan.changes:
        if change.action is Action.WRITE and change.new is not None:
            write_atomic(change.path, change.new, mode)
        elif change.action is Action.REMOVE:
            os.remove(change.path)


def _file_mode() -> int:
    # The mode a plain `open(path, "w")` would give, which mkstemp does not.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` by `data` in one step: a reader sees old or new, never half."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
