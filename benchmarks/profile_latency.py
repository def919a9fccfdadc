"""Where lucidity's time goes in the latency workload (py-spy, sampling).

    python benchmarks/profile_latency.py [--seconds 15] [--rate 250] [--out DIR]

Starts a client that calls `square_remote(x)` in a loop on the embedded
cluster, records it and its daemons and workers with
`py-spy record --subprocesses --format raw` (needs `pip install py-spy` and
permission to ptrace: root, or CAP_SYS_PTRACE), then prints, per process role
(client, node, worker, control), the share of samples and the functions where
they were taken (own time and inclusive time). Idle (waiting) samples are
dropped unless `--idle`.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from engines import common  # noqa: E402

CLIENT = """
import sys, time
from benchapp.bench_jobs import square_remote
square_remote(1)
print("READY", flush=True)
n = 0
t0 = time.perf_counter()
end = t0 + float(sys.argv[1])
while time.perf_counter() < end:
    square_remote(n)
    n += 1
print("ROUND-TRIPS", n, "mean-us", (time.perf_counter() - t0) / n * 1e6, flush=True)
"""


def role(proc: str) -> str:
    if "lucidity.cluster.node.worker" in proc:
        return "worker"
    if " control" in proc:
        return "control daemon"
    if " node" in proc:
        return "node daemon"
    if "latency_client" in proc:
        return "client (app)"
    return proc[:60]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--idle", action="store_true")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", default=None, help="keep the raw py-spy output here")
    args = ap.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    out_dir = args.out or tempfile.mkdtemp(prefix="lucidity-prof-")
    os.makedirs(out_dir, exist_ok=True)
    raw = os.path.join(out_dir, "latency.raw.txt")
    script = os.path.join(out_dir, "latency_client.py")  # one-line cmdline for py-spy
    with open(script, "w") as f:
        f.write(CLIENT)
    client = subprocess.Popen(
        [sys.executable, script, str(args.seconds + 3)],
        stdout=subprocess.PIPE,
        text=True,
        env=common.child_env(),
        cwd=HERE,
        start_new_session=True,
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline()  # READY once the cluster answered
        if not line.startswith("READY"):
            raise SystemExit(f"client did not start: {line!r}")
        time.sleep(1.0)
        cmd = [
            "py-spy",
            "record",
            "--pid",
            str(client.pid),
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            str(args.rate),
            "--duration",
            str(int(args.seconds)),
            "--output",
            raw,
            "--nonblocking",
        ]
        if args.idle:
            cmd.append("--idle")
        subprocess.run(
            cmd,
            check=True,
            timeout=args.seconds + 60,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        summary = client.stdout.readline().strip()
        client.wait(timeout=30)
    finally:
        common.kill_tree(client.pid)
    print(f"client: {summary}")
    print(f"py-spy raw stacks: {raw}")
    by_role: collections.Counter[str] = collections.Counter()
    own: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            procs = [fr for fr in frames if fr.startswith("process ")]
            r = role(procs[-1]) if procs else "?"  # the innermost process
            n = int(count)
            by_role[r] += n
            funcs = [
                re.sub(
                    r" \(.*?/(lib/python[0-9.]+/|site-packages/|lucidity/)", " (", fr
                )
                for fr in frames
                if not fr.startswith(("process ", "thread "))
            ]
            if funcs:
                own[r][funcs[-1]] += n
                for fn in set(funcs):
                    incl[r][fn] += n
    total = sum(by_role.values()) or 1
    print(f"\nsamples (non-idle unless --idle): {total}")
    for r, n in by_role.most_common():
        print(f"\n## {r}: {n} samples, {100 * n / total:.0f}%")
        print("own time:")
        for fn, k in own[r].most_common(args.top):
            print(f"  {100 * k / n:5.1f}%  {fn}")
        print("inclusive:")
        for fn, k in incl[r].most_common(args.top):
            print(f"  {100 * k / n:5.1f}%  {fn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
