"""What CURVE keys cost on loopback: the same cluster with keys and --insecure.

Run from this folder: `PYTHONPATH=. python curve_cost.py [--rounds R] [--n N]`.
In one run, alternating, R times each: a control and 2 nodes x 1 worker on
tcp://127.0.0.1 (each node on its share of the CPUs, as the embedded cluster),
started with `--keys DIR` (a fresh `lucidity keygen` folder) or `--insecure`;
this process connects to it (with the keys, or `insecure=True`) and measures
`square_remote` latency (p50/p99 of N sequential calls after 200 untimed) and
a 64 MiB float64 echo with shared memory on (median of 5 after 1 warm-up).
Prints a table and one JSON line; the ratio is keys / insecure, same run.
This measures; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchapp import bench_jobs  # noqa: E402
from engines import common  # noqa: E402

import lucidity  # noqa: E402
from lucidity.cluster._cpus import available, format_cpus, split  # noqa: E402
from lucidity.cluster.client.core import get_client  # noqa: E402
from lucidity.cluster.embedded import LocalCluster, _start  # noqa: E402
from lucidity.cluster.security import keygen  # noqa: E402


def start(mode: str, keys: str) -> LocalCluster:
    security = ["--keys", keys] if mode == "keys" else ["--insecure"]
    shares = split(sorted(available()), 2)
    nodes = [
        ["node", "--bind", "tcp://127.0.0.1:*", "--workers", "1", *security]
        + (["--cpus", format_cpus(share)] if len(shares) == 2 else [])
        for share in shares
    ]
    folder = tempfile.mkdtemp(prefix="lucidity-curve-")
    return _start(folder, ["control", "--bind", "tcp://127.0.0.1:*", *security], nodes)


def measure(mode: str, keys: str, n: int) -> dict[str, Any]:
    cluster = start(mode, keys)
    try:
        assert cluster.control is not None
        if mode == "keys":
            lucidity.connect(cluster.control, keys=keys)
        else:
            lucidity.connect(cluster.control, insecure=True)
        nodes = get_client().wait_for_nodes(2, timeout=15)
        shm = all("shm" in node for node in nodes)
        latency = common.measure_latency(bench_jobs.square_remote, n, 200)
        payload = common.measure_payload(bench_jobs.echo_remote, 5)
        return {
            "mode": mode,
            "shm": shm,
            "p50_us": latency["p50_us"],
            "p99_us": latency["p99_us"],
            "echo_mb_s": payload["mb_per_s"],
        }
    finally:
        lucidity.shutdown()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lucidity-curve-keys-") as tmp:
        keys = str(keygen(os.path.join(tmp, "keys")))
        for _ in range(args.rounds):
            for mode in ("keys", "insecure"):
                runs.append(measure(mode, keys, args.n))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for mode in ("keys", "insecure"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            k: statistics.median(r[k] for r in mine)
            for k in ("p50_us", "p99_us", "echo_mb_s")
        }
        summary[mode]["shm"] = all(r["shm"] for r in mine)
    print(f"CURVE on loopback: medians of {args.rounds} alternating rounds")
    print("| mode | shm | latency p50 us | p99 us | 64 MiB echo MB/s |")
    print("|---|---|---|---|---|")
    for mode, s in summary.items():
        print(
            f"| {mode} | {s['shm']} | {s['p50_us']:.0f} | {s['p99_us']:.0f} "
            f"| {s['echo_mb_s']:,.0f} |"
        )
    k, i = summary["keys"], summary["insecure"]
    print(
        f"keys / insecure: latency p50 {k['p50_us'] / i['p50_us']:.2f}x, "
        f"echo {k['echo_mb_s'] / i['echo_mb_s']:.2f}x "
        f"({time.monotonic() - started:.0f} s)"
    )
    print(json.dumps({"runs": runs, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
