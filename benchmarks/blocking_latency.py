"""p50 latency and CPU per call of sequential blocking calls on the embedded cluster.

Run from this folder: `PYTHONPATH=. python blocking_latency.py [N]`. Prints one
JSON line: percentiles of N sequential `square_remote` calls (after 300
untimed ones), and the CPU they cost summed over the process tree (this
process, the embedded daemons and their workers, from /proc/PID/stat
utime+stime), per call and per kind of process. Compare two trees by putting
the other one first on PYTHONPATH (the daemons inherit it); alternate runs,
the machine is noisy.
"""

from __future__ import annotations

import json
import os
import sys
import time

from benchapp.bench_jobs import square_remote

import lucidity
import lucidity.cluster.client.core as lc

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except FileNotFoundError:
        pass
    return out


def tree(roots: list[int]) -> list[int]:
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo += children(pid)
    return seen


def kind(pid: int) -> str:
    if pid == os.getpid():
        return "client"
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            argv = f.read().split("\0")
    except FileNotFoundError:
        return "gone"
    if "lucidity.cluster.node.worker" in argv:
        return "worker"
    return next((k for k in ("control", "node") if k in argv), "other")


def ticks_by_kind(pids: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pid in pids:
        try:
            t = cpu_ticks(pid)
        except FileNotFoundError:
            continue
        out[kind(pid)] = out.get(kind(pid), 0) + t
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    for i in range(300):
        square_remote(i)
    pids = tree([os.getpid(), *(d.proc.pid for d in lc._cluster.daemons)])
    before = ticks_by_kind(pids)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        square_remote(i)
        lat.append(time.perf_counter() - t)
    after = ticks_by_kind(pids)
    lat.sort()
    per_call = {k: (after[k] - before.get(k, 0)) / TICK / n * 1e6 for k in after}
    print(
        json.dumps(
            {
                "lucidity": os.path.dirname(lucidity.__file__),
                "p50_us": round(lat[n // 2] * 1e6, 1),
                "p90_us": round(lat[int(n * 0.9)] * 1e6, 1),
                "p99_us": round(lat[int(n * 0.99)] * 1e6, 1),
                "cpu_us_per_call": round(sum(per_call.values()), 1),
                "cpu_us_by_kind": {k: round(v, 1) for k, v in per_call.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
