"""Shared by every engine module: sizes, timing, events, and ending processes by pid."""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

MIB64 = 64 * 1024 * 1024
PAYLOAD_MB = MIB64 / 1e6  # 67.1 MB: the figure MB/s is computed from
STARTUP_MARKER = "BENCH-FIRST-RESULT"


class Sizes:
    """Workload sizes; `quick` divides the big ones (see README)."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.latency_n = 500 if quick else 2000
        self.latency_warmup = 100 if quick else 200
        self.fanout_n = 20_000 if quick else 200_000
        self.nested_n = 100 if quick else 500
        self.payload_reps = 3 if quick else 5
        self.startup_reps = 2 if quick else 3

    def fanout_for(self, slow_n: int | None) -> int:
        """The fanout size for an engine whose full-run cap is `slow_n`."""
        if slow_n is None:
            return self.fanout_n
        return max(200, slow_n // 10) if self.quick else slow_n


# ---- events (child -> parent) -------------------------------------------

_events_path: str | None = None


def set_events_path(path: str) -> None:
    global _events_path
    _events_path = path


def emit(**event: Any) -> None:
    """Append one JSON line to the events file the parent watches."""
    event["t"] = time.time()
    line = json.dumps(event, default=str) + "\n"
    if _events_path is None:
        sys.stdout.write(line)
        return
    with open(_events_path, "a") as f:
        f.write(line)
        f.flush()


# ---- timing ---------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def measure_latency(call: Callable[[int], Any], n: int, warmup: int) -> dict[str, Any]:
    """`call(i)` sequentially: `warmup` untimed, then `n` timed round trips."""
    for i in range(warmup):
        result = call(i)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        result = call(i)
        samples.append(time.perf_counter() - t0)
    if result != (n - 1) * (n - 1):
        raise AssertionError(f"wrong result: square({n - 1}) gave {result!r}")
    samples.sort()
    us = [s * 1e6 for s in samples]
    return {
        "n": n,
        "warmup": warmup,
        "p50_us": percentile(us, 0.50),
        "p99_us": percentile(us, 0.99),
        "mean_us": statistics.fmean(us),
        "max_us": us[-1],
    }


def measure_fanout(run: Callable[[int], list[Any]], n: int) -> dict[str, Any]:
    """`run(n)` returns `[square(i) for i in range(n)]`, timed once."""
    t0 = time.perf_counter()
    out = list(run(n))
    dt = time.perf_counter() - t0
    if len(out) != n or out[-1] != (n - 1) * (n - 1) or out[n // 2] != (n // 2) ** 2:
        raise AssertionError("fanout results are wrong or out of order")
    return {"n": n, "seconds": dt, "per_s": n / dt}


def nested_pairs(n: int) -> list[tuple[int, int]]:
    return [(3 + i % 50, 4 + i % 70) for i in range(n)]


def measure_nested(
    run: Callable[[list[tuple[int, int]]], list[float]], n: int
) -> dict[str, Any]:
    pairs = nested_pairs(n)
    # Warm-up, the whole workload once, for every engine alike: engines that
    # start extra workers for blocked parents (Ray, lucidity) are measured at
    # their steady state, not while they start processes.
    run(pairs)
    t0 = time.perf_counter()
    out = list(run(pairs))
    dt = time.perf_counter() - t0
    want = [(a * a + b * b) ** 0.5 for a, b in pairs]
    if len(out) != n or any(abs(x - y) > 1e-9 for x, y in zip(out, want, strict=False)):
        raise AssertionError("nested results are wrong")
    return {"n": n, "seconds": dt, "per_s": n / dt}


def make_array() -> Any:
    import numpy as np

    return np.arange(MIB64 // 8, dtype=np.float64)


def measure_payload(echo: Callable[[Any], Any], reps: int) -> dict[str, Any]:
    """Echo a 64 MiB float64 array: 1 warm-up, then `reps` timed round trips."""
    import numpy as np

    arr = make_array()
    out = echo(arr)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = echo(arr)
        times.append(time.perf_counter() - t0)
    out = np.asarray(out)
    if out.shape != arr.shape or out[-1] != arr[-1] or out[12345] != arr[12345]:
        raise AssertionError("echoed array differs")
    med = statistics.median(times)
    return {
        "reps": reps,
        "median_s": med,
        "min_s": min(times),
        "mb_per_s": PAYLOAD_MB / med,
    }


# ---- processes --------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[3])  # ppid, sid


def tree_pids(root: int) -> list[int]:
    """`root`, its descendants, and anything left in the session it leads."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None:
                stats[int(name)] = st
    found = {root} if root in stats else set()
    changed = True
    while changed:
        changed = False
        for pid, (ppid, sid) in stats.items():
            if pid not in found and (ppid in found or sid == root):
                found.add(pid)
                changed = True
    found.discard(os.getpid())
    return sorted(found)


def kill_tree(root: int, grace: float = 2.0) -> int:
    """End `root` and every process under it, by pid (TERM, then KILL)."""
    pids = tree_pids(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not [p for p in pids if _alive(p)]:
            break
        time.sleep(0.05)
    left = [p for p in tree_pids(root) + pids if _alive(p)]
    for pid in set(left):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:  # reap our own children
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return len(set(pids))


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    if st is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def child_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/
    paths = [here] + ([extra_path] if extra_path else [])
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    env.pop("LUCIDITY_CONTROL", None)
    return env


def time_startup(code: str, timeout: float, cwd: str | None = None) -> dict[str, Any]:
    """Spawn `python -c code`; seconds to the printed marker and to exit.

    The child is its own session leader; whatever it leaves behind is ended
    by pid afterwards.
    """
    env = child_env()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    marker_s = None
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no exit within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                if marker_s is None and STARTUP_MARKER.encode() in buf:
                    marker_s = time.perf_counter() - t0
        left = max(0.1, deadline - time.monotonic())
        rc = proc.wait(left)
        exit_s = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    except (TimeoutError, subprocess.TimeoutExpired) as exc:
        kill_tree(proc.pid)
        proc.wait(5)
        raise TimeoutError(f"start-up probe: {exc}") from None
    finally:
        settle = time.monotonic() + 3.0  # daemons may take a moment to follow
        while tree_pids(proc.pid) and time.monotonic() < settle:
            time.sleep(0.05)
        leftovers = kill_tree(proc.pid)
    if rc != 0 or marker_s is None:
        raise RuntimeError(f"start-up probe exited {rc}: {err.strip()[-800:]}")
    return {"first_result_s": marker_s, "exit_s": exit_s, "leftovers_killed": leftovers}


def measure_startup(code: str, reps: int, timeout: float = 60.0) -> dict[str, Any]:
    runs = [time_startup(code, timeout) for _ in range(reps)]
    firsts = sorted(r["first_result_s"] for r in runs)
    exits = sorted(r["exit_s"] for r in runs)
    return {
        "reps": reps,
        "first_result_s": statistics.median(firsts),
        "first_result_min_s": firsts[0],
        "exit_s": statistics.median(exits),
        "leftovers_killed": sum(r["leftovers_killed"] for r in runs),
    }
