"""Run one engine's workloads in this process; report through an events file.

    python benchmarks/engines/child.py ENGINE --events FILE [--quick]
        [--workloads startup,latency,fanout,nested,payload]

The parent (`benchmarks/run.py`) watches the events, enforces a timeout per
workload, and ends this process's whole tree by pid when one runs over.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engines import common  # noqa: E402

WORKLOADS = ["startup", "latency", "fanout", "nested", "payload"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("--events", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args()
    common.set_events_path(args.events)
    sizes = common.Sizes(args.quick)
    todo = [w for w in args.workloads.split(",") if w]

    try:
        mod = importlib.import_module(f"engines.eng_{args.engine}")
    except ImportError as exc:
        common.emit(event="skip", reason=f"not installed: {exc}")
        return 0
    engine = mod.Engine(sizes)

    if "startup" in todo:
        todo.remove("startup")
        common.emit(event="start", workload="startup")
        try:
            data = common.measure_startup(mod.STARTUP_CODE, sizes.startup_reps)
            common.emit(event="result", workload="startup", data=data)
        except Exception as exc:
            common.emit(event="error", workload="startup", error=_short(exc))

    runnable = [w for w in todo if hasattr(engine, w)]
    for w in todo:
        if w not in runnable:
            common.emit(
                event="na", workload=w, reason=getattr(engine, f"{w}_na", "n/a")
            )
    if not runnable:
        return 0

    common.emit(event="start", workload="setup")
    t0 = time.perf_counter()
    try:
        engine.setup()
    except Exception as exc:
        common.emit(event="error", workload="setup", error=_short(exc))
        _teardown(engine)
        return 3
    common.emit(
        event="result", workload="setup", data={"seconds": time.perf_counter() - t0}
    )
    for w in runnable:
        common.emit(event="start", workload=w)
        try:
            if os.environ.get("BENCH_SELFTEST_HANG") == f"{args.engine}:{w}":
                time.sleep(10**6)  # for testing the parent's timeout path only
            data = getattr(engine, w)()
            common.emit(event="result", workload=w, data=data)
        except Exception as exc:
            traceback.print_exc()
            common.emit(event="error", workload=w, error=_short(exc))
    _teardown(engine)
    common.emit(event="done")
    return 0


def _teardown(engine: object) -> None:
    common.emit(event="start", workload="teardown")
    try:
        engine.teardown()  # type: ignore[attr-defined]
    except Exception as exc:
        common.emit(event="error", workload="teardown", error=_short(exc))


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 600 else text[:600] + "..."


if __name__ == "__main__":
    sys.exit(main())
