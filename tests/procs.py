"""Processes, seen through /proc: the tests' helpers to find, wait for and
end the processes they started (by pid, never by name). A helper module, as
`waits` is: conftest and test modules import it; it starts nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first),
    or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of `pid`, or None if there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[1]))


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot): tells a pid from its reuse."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def cpu_ticks(pid: int) -> int | None:
    """CPU time `pid` has used (user + system, clock ticks)."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped yet counts as gone)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pid and st[0] != "Z":
                out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait (bounded) until none of `pids` runs; return those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Procs:
    """The /proc helpers, for test modules (they cannot import conftest)."""

    alive = staticmethod(alive)
    children = staticmethod(children)
    descendants = staticmethod(descendants)
    wait_gone = staticmethod(wait_gone)
    kill_pids = staticmethod(kill_pids)
    stat = staticmethod(_stat)
    cpu_ticks = staticmethod(cpu_ticks)
