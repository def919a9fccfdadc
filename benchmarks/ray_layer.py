"""What lucidity's Ray engine costs over raw Ray, both on one local Ray.

    python benchmarks/ray_layer.py [--rounds 3] [--quick] [--only nested,...]

`benchmarks/run.py` runs each engine in a subprocess of its own, one after
the other, so on a machine whose speed swings its Ray figures compare runs
minutes apart. Here raw Ray (`benchmarks/engines/eng_ray.py`) and the
generated stubs on `LUCIDITY_ENGINE=ray` (`eng_lucidity_ray.py`) share one
Ray started once (2 CPUs, 127.0.0.1), and each workload alternates between
them for a few rounds: the ratio of each round is lucidity's figure over
raw Ray's taken just before, and the median ratio is reported, with the
CPU time the whole machine spent on each (steadier than wall time here,
since Ray's wall-clock figures swing 2-3x between runs on a small VM; the
workloads do not do the same work per figure: compare each with itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["LUCIDITY_ENGINE"] = "ray"

from engines import common, eng_lucidity_ray, eng_ray  # noqa: E402

# (workload, figure, lower is better)
FIGURES = [
    ("latency", "p50_us", True),
    ("nested", "per_s", False),
    ("fanout", "per_s", False),
    ("payload", "mb_per_s", False),
]


def _cpu_s() -> float:
    """CPU time the whole machine has spent (every Ray process included)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def _timed(engine: Any, workload: str) -> tuple[dict[str, Any], float]:
    """A workload's figures, and the machine's CPU seconds it took."""
    before = _cpu_s()
    data: dict[str, Any] = getattr(engine, workload)()
    return data, _cpu_s() - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternations (3)")
    ap.add_argument("--quick", action="store_true", help="the smaller sizes")
    ap.add_argument("--only", help="comma-separated workloads (default: all)")
    args = ap.parse_args()
    sizes = common.Sizes(args.quick)
    raw, ours = eng_ray.Engine(sizes), eng_lucidity_ray.Engine(sizes)
    raw.setup()  # ray.init: the Ray both use
    ours.setup()  # lucidity joins the Ray this process started
    rows = []
    try:
        only = set(args.only.split(",")) if args.only else None
        for workload, key, lower in FIGURES:
            if only is not None and workload not in only:
                continue
            ratios: list[float] = []
            cpus: list[float] = []
            for r in range(args.rounds):
                a, a_cpu = _timed(raw, workload)
                b, b_cpu = _timed(ours, workload)
                ratio = b[key] / a[key]
                ratios.append(ratio)
                cpus.append(b_cpu / a_cpu)
                print(
                    f"{workload} round {r + 1}: lucidity {b[key]:,.1f}, "
                    f"raw Ray {a[key]:,.1f} ({key}): {ratio:.2f}x; machine CPU "
                    f"{b_cpu:.2f} s against {a_cpu:.2f} s",
                    flush=True,
                )
            better = "lower" if lower else "higher"
            rows.append(
                (workload, key, statistics.median(ratios), ratios, better, cpus)
            )
    finally:
        ours.teardown()
        raw.teardown()
    print(
        "\n| workload | lucidity / raw Ray (median) | rounds | better "
        "| machine CPU, lucidity / raw Ray (median) |"
    )
    print("|---|---|---|---|---|")
    for workload, key, median, ratios, better, cpus in rows:
        each = ", ".join(f"{x:.2f}x" for x in ratios)
        cpu = statistics.median(cpus)
        print(
            f"| {workload} ({key}) | {median:.2f}x | {each} | {better} | {cpu:.2f}x |"
        )


if __name__ == "__main__":
    main()
