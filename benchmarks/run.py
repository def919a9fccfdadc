"""lucidity's benchmark suite: lucidity, raw pyzmq baselines and peer engines, one command.

    python benchmarks/run.py [--quick] [--only lucidity,raw_zmq,...] [--out FILE.md]
                             [--json FILE.json] [--no-codegen] [--logs DIR]

Each engine runs in its own subprocess (its own session), workload by workload,
with a timeout per workload; a workload that fails or runs over is recorded as
an error, the engine's whole process tree is ended by pid, and the engine's
remaining workloads go on in a fresh subprocess. An engine that is not
installed is skipped with a note. Every cluster uses two worker processes on
127.0.0.1. This measures; it asserts nothing about speed. See README.md.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from engines import common  # noqa: E402

ENGINES = [
    "lucidity",
    "raw_zmq",
    "zmq_reqrep",
    "mp_pool",
    "ppe",
    "loky",
    "dask",
    "ipyparallel",
    "ray",
    "lucidity_ray",
]
WORKLOADS = ["startup", "latency", "fanout", "nested", "payload"]
TIMEOUTS = {  # seconds per step of one engine (bounds, not targets)
    "startup": 150,
    "setup": 120,
    "latency": 180,
    "fanout": 300,
    "nested": 180,
    "payload": 180,
    "teardown": 60,
}
ENGINE_BUDGET_S = 900
CODEGEN_TIMEOUT_S = 300
BASELINES = ["raw_zmq", "zmq_reqrep", "mp_pool", "ppe"]
PEERS = ["loky", "dask", "ipyparallel", "ray", "lucidity_ray"]


# ---- running one engine ------------------------------------------------------


def run_engine(name: str, quick: bool, logdir: str) -> dict[str, Any]:
    """Run `name`'s workloads in subprocesses; its results, errors and notes."""
    out: dict[str, Any] = {"name": name, "workloads": {}, "notes": [], "status": "ok"}
    remaining = list(WORKLOADS)
    started = time.monotonic()
    attempt = 0
    while remaining and attempt < len(WORKLOADS) + 1:
        attempt += 1
        if time.monotonic() - started > ENGINE_BUDGET_S:
            for w in remaining:
                out["workloads"][w] = {
                    "status": "error",
                    "error": "engine time budget spent",
                }
            break
        events = os.path.join(logdir, f"{name}.{attempt}.events.jsonl")
        log = os.path.join(logdir, f"{name}.{attempt}.log")
        cmd = [
            sys.executable,
            os.path.join(HERE, "engines", "child.py"),
            name,
            "--events",
            events,
            "--workloads",
            ",".join(remaining),
        ]
        if quick:
            cmd.append("--quick")
        open(events, "w").close()
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=common.child_env(),
                cwd=HERE,
                start_new_session=True,
            )
        t0 = time.monotonic()
        state = _watch(proc, events, out, remaining)
        out.setdefault("child_wall_s", 0.0)
        out["child_wall_s"] += time.monotonic() - t0
        leftovers = common.kill_tree(proc.pid)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if leftovers:
            out["notes"].append(
                f"attempt {attempt}: {leftovers} process(es) left over, ended by pid"
            )
        tail = _tail(log)
        if state["skip"]:
            out["status"] = "skipped"
            out["notes"].append(f"skipped: {state['skip']}")
            return out
        current = state["current"]
        if current is not None and current not in ("teardown",):
            why = (
                state["why"] or f"child exited with {proc.returncode} during {current}"
            )
            _record_failure(out, remaining, current, why, tail, log)
        elif state["why"] and current == "teardown":
            out["notes"].append(f"teardown: {state['why']}")
        elif proc.returncode not in (0, None) and not state["done"]:
            out["notes"].append(
                f"child exited with {proc.returncode}; log {log}: {tail}"
            )
        remaining = [w for w in remaining if w not in out["workloads"]]
        if state["setup_failed"]:
            for w in remaining:
                out["workloads"][w] = {
                    "status": "error",
                    "error": "engine setup failed (see notes)",
                }
            remaining = []
    if any(v.get("status") == "error" for v in out["workloads"].values()):
        out["status"] = "errors"
    return out


def _watch(
    proc: subprocess.Popen[bytes],
    events: str,
    out: dict[str, Any],
    remaining: list[str],
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "current": None,
        "since": time.monotonic(),
        "why": None,
        "skip": None,
        "done": False,
        "setup_failed": False,
    }
    pos = 0
    while True:
        exited = proc.poll() is not None
        with open(events) as f:
            f.seek(pos)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        pos += len(complete.encode())
        for line in complete.splitlines():
            ev = json.loads(line)
            kind, w = ev["event"], ev.get("workload")
            if kind == "start":
                state["current"], state["since"] = w, time.monotonic()
            elif kind == "result":
                if w == "setup":
                    out["setup_s"] = ev["data"]["seconds"]
                else:
                    out["workloads"][w] = {"status": "ok", **ev["data"]}
                state["current"] = None
            elif kind == "error":
                if w == "setup":
                    state["setup_failed"] = True
                    out["notes"].append(f"setup failed: {ev['error']}")
                elif w == "teardown":
                    out["notes"].append(f"teardown failed: {ev['error']}")
                else:
                    out["workloads"][w] = {"status": "error", "error": ev["error"]}
                state["current"] = None
            elif kind == "na":
                out["workloads"][w] = {
                    "status": "na",
                    "reason": ev.get("reason", "n/a"),
                }
            elif kind == "skip":
                state["skip"] = ev["reason"]
            elif kind == "done":
                state["done"] = True
                state["current"] = None
        if exited:
            return state
        cur = state["current"]
        if cur is not None:
            limit = TIMEOUTS.get(cur, 120)
            if time.monotonic() - state["since"] > limit:
                state["why"] = f"timeout: no result within {limit} s"
                return state
        time.sleep(0.1)


def _record_failure(
    out: dict[str, Any],
    remaining: list[str],
    current: str,
    why: str,
    tail: str,
    log: str,
) -> None:
    msg = f"{why} (log {log}: {tail})"
    if current == "setup":
        out["notes"].append(f"setup: {msg}")
        for w in remaining:
            if w not in out["workloads"]:
                out["workloads"][w] = {"status": "error", "error": f"setup: {why}"}
    else:
        out["workloads"][current] = {"status": "error", "error": why}
        out["notes"].append(f"{current}: {msg}")


def _tail(path: str, lines: int = 6) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-1200:]


# ---- the generator -------------------------------------------------------------


def snapshot(rev: str) -> tuple[str, str]:
    """Lay out lucidity's package from git `rev` in a temp folder; put it first on
    PYTHONPATH (ours and every child's), ahead of the installed editable copy."""
    root = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=HERE,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="lucidity-snapshot-")
    src = os.path.join(tmp, "src")
    os.makedirs(src)
    archive = subprocess.run(
        ["git", "archive", rev, "runtime", "codegen", "templates"],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True, timeout=60)
    pkg = os.path.join(tmp, "pkg", "lucidity")
    shutil.copytree(os.path.join(src, "runtime"), pkg)
    shutil.copytree(os.path.join(src, "codegen"), os.path.join(pkg, "codegen"))
    shutil.copytree(os.path.join(src, "templates"), os.path.join(pkg, "templates"))
    path = os.path.join(tmp, "pkg")
    # Bytecode, as pip writes it when it installs a wheel: otherwise every
    # process (app, daemons, workers) compiles lucidity at start-up when
    # PYTHONDONTWRITEBYTECODE is set, as it is on these machines.
    compileall.compile_dir(path, quiet=1)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path + (os.pathsep + old if old else "")
    sys.path.insert(0, path)
    return tmp, commit


def regenerate_app() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "lucidity.codegen", "benchapp/"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
        env=common.child_env(),
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"lucidity-gen benchapp/ failed ({proc.returncode}): "
            f"{proc.stdout}{proc.stderr}"
        )
    return (proc.stdout + proc.stderr).strip()


def run_codegen(quick: bool) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.join(HERE, "bench_codegen.py"),
        "--repeat",
        "1" if quick else "3",
        "--sample",
        "20" if quick else "100",
    ]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=CODEGEN_TIMEOUT_S,
            cwd=HERE,
            env=common.child_env(),
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timeout after {CODEGEN_TIMEOUT_S} s"}
    text = proc.stdout.strip()
    m = re.search(r"best of (\d+): ([0-9.]+) s \(exit (\d+)\)", text)
    if proc.returncode != 0 or not m:
        return {
            "status": "error",
            "error": f"exit {proc.returncode}: {(text + proc.stderr)[-600:]}",
        }
    data: dict[str, Any] = {
        "status": "ok",
        "best_s": float(m.group(2)),
        "repeat": int(m.group(1)),
        "exit": int(m.group(3)),
        "output": text,
    }
    m2 = re.search(r"tree: (.*) \((\d+) files, ([0-9.]+) MB\)", text)
    if m2:
        data["tree"], data["files"], data["mb"] = (
            m2.group(1),
            int(m2.group(2)),
            float(m2.group(3)),
        )
    m3 = re.search(r"ratio .*: (\d+)x", text)
    if m3:
        data["vs_parse_all"] = int(m3.group(1))
    return data


# ---- the machine ---------------------------------------------------------------


def single_core_ms() -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        sum(i * i for i in range(10**6))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            ram = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for pkg in [
        "lucidity",
        "pyzmq",
        "numpy",
        "dask",
        "distributed",
        "ray",
        "ipyparallel",
        "loky",
        "cloudpickle",
        "psutil",
        "msgpack",
        "tornado",
    ]:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        import zmq

        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    commit = "?"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram": ram,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "commit": commit,
        "single_core_ms": single_core_ms(),
        "loadavg": os.getloadavg()[0],
    }


# ---- the report ----------------------------------------------------------------


def _w(res: dict[str, Any], engine: str, workload: str) -> dict[str, Any] | None:
    return res.get(engine, {}).get("workloads", {}).get(workload)


def _val(res: dict[str, Any], engine: str, workload: str, key: str) -> float | None:
    w = _w(res, engine, workload)
    if w and w.get("status") == "ok" and key in w:
        return float(w[key])
    return None


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def _cell(
    res: dict[str, Any],
    engine: str,
    workload: str,
    key: str,
    digits: int = 0,
    show_n: bool = False,
) -> str:
    e = res.get(engine)
    if e is None:
        return "not run"
    if e.get("status") == "skipped":
        return "skipped"
    w = _w(res, engine, workload)
    if w is None:
        return "-"
    if w["status"] == "na":
        return "n/a"
    if w["status"] == "error":
        err = w["error"]
        return "ERROR: timeout" if err.startswith("timeout") else "ERROR"
    text = _fmt(w.get(key), digits)
    if show_n and "n" in w:
        text += f" (N={w['n']:,})"
    return text


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def render(
    res: dict[str, Any],
    mach: dict[str, Any],
    codegen: dict[str, Any] | None,
    args: argparse.Namespace,
    labels: dict[str, str],
    wall_s: float,
) -> str:
    L: list[str] = []
    mode = "quick" if args.quick else "full"
    s = common.Sizes(args.quick)
    L.append(f"# lucidity benchmarks ({mode} run)")
    L.append("")
    cmd = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    if args.only:
        cmd += f" --only {args.only}"
    if args.snapshot:
        cmd += f" --snapshot {args.snapshot}"
    L.append(f"- Command: `{cmd}`; wall time {wall_s:.0f} s")
    L.append(
        f"- Date: {mach['date']}; repository HEAD {mach['commit']}; lucidity measured: "
        f"{mach.get('lucidity_source', '?')}"
    )
    L.append(
        f"- Machine: nproc={mach['nproc']}, {mach['cpu']}, RAM {mach['ram']}, "
        f"Linux {mach['kernel']}, {mach['python']}; single-core speed: "
        f"sum(i*i for i in range(10**6)) = {mach['single_core_ms']:.1f} ms (best of 5); "
        f"1-min load average at start {mach['loadavg']:.2f} (other work on the machine "
        "skews figures: compare within one run)"
    )
    L.append(
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items())
    )
    L.append(
        f"- Sizes: latency {s.latency_n} sequential round trips after {s.latency_warmup} "
        f"warm-up; fanout {s.fanout_n:,} jobs (smaller N for slow engines, shown in the "
        f"cell); nested {s.nested_n} parents x 2 children; payload 64 MiB float64 echo, "
        f"median of {s.payload_reps} after 1 warm-up; start-up median of {s.startup_reps} "
        f"fresh interpreters"
    )
    L.append(
        "- Every engine: 2 worker processes, 127.0.0.1 only, own subprocess, "
        "per-workload timeouts " + ", ".join(f"{k} {v} s" for k, v in TIMEOUTS.items())
    )
    L.append("")

    luc = "lucidity"
    lat = _val(res, luc, "latency", "p50_us")
    fan = _val(res, luc, "fanout", "per_s")
    nest = _val(res, luc, "nested", "per_s")
    echo = _val(res, luc, "payload", "mb_per_s")
    start = _val(res, luc, "startup", "first_result_s")

    L.append("## Targets")
    L.append("")
    L.append("| target | lucidity | baseline | ratio | target | met? |")
    L.append("|---|---|---|---|---|---|")

    def row(
        name: str,
        mine: float | None,
        mine_s: str,
        base: float | None,
        base_s: str,
        ratio: float | None,
        target: str,
        ok: bool | None,
        why_missing: str = "",
    ) -> None:
        met = "n/a" if ok is None else ("yes" if ok else "NO")
        r = f"{ratio:.3g}x" if ratio is not None else (why_missing or "-")
        L.append(f"| {name} | {mine_s} | {base_s} | {r} | {target} | {met} |")

    b = _val(res, "raw_zmq", "latency", "p50_us")
    r = _ratio(lat, b)
    row(
        "latency p50 vs raw pyzmq chain",
        lat,
        f"{_fmt(lat)} us",
        b,
        f"{_fmt(b)} us (raw_zmq)",
        r,
        "<= 1.5x",
        None if r is None else r <= 1.5,
    )
    b = _val(res, "mp_pool", "fanout", "per_s")
    r = _ratio(fan, b)
    row(
        "fanout vs Pool(2).map default chunking",
        fan,
        f"{_fmt(fan)} jobs/s",
        b,
        f"{_fmt(b)} jobs/s (mp_pool)",
        r,
        ">= 0.5x",
        None if r is None else r >= 0.5,
    )
    b = _val(res, "ray", "nested", "per_s")
    r = _ratio(nest, b)
    row(
        "nested vs Ray",
        nest,
        f"{_fmt(nest, 1)} parents/s",
        b,
        f"{_fmt(b, 1)} parents/s (ray)" if b is not None else "Ray not measured",
        r,
        ">= 5x",
        None if r is None else r >= 5,
    )
    # The Ray engine: lucidity's layer over raw Ray, same run.
    for what, key, target, ok_at in (
        ("latency p50", "p50_us", "<= 1.2x", lambda x: x <= 1.2),
        ("nested", "per_s", ">= 0.9x (matches)", lambda x: x >= 0.9),
        ("fanout", "per_s", "> 1x", lambda x: x > 1),
    ):
        work = {"latency p50": "latency", "nested": "nested"}.get(what, "fanout")
        mine_r = _val(res, "lucidity_ray", work, key)
        b = _val(res, "ray", work, key)
        r = _ratio(mine_r, b)
        unit = {"p50_us": "us", "per_s": "/s"}[key]
        row(
            f"lucidity on Ray: {what} vs raw Ray"
            + (" (ray.get of a list of .remote)" if what == "fanout" else ""),
            mine_r,
            f"{_fmt(mine_r)} {unit} (lucidity_ray)",
            b,
            f"{_fmt(b)} {unit} (ray)",
            r,
            target,
            None if r is None else ok_at(r),
        )
    b = _val(res, "zmq_reqrep", "payload", "mb_per_s")
    r = _ratio(echo, b)
    row(
        "64 MiB echo vs raw pyzmq REQ/REP",
        echo,
        f"{_fmt(echo)} MB/s",
        b,
        f"{_fmt(b)} MB/s (zmq_reqrep)",
        r,
        ">= 3x",
        None if r is None else r >= 3,
    )
    row(
        "first result on the embedded cluster",
        start,
        f"{_fmt(start, 3)} s",
        None,
        "-",
        None,
        "< 0.5 s",
        None if start is None else start < 0.5,
    )
    if codegen is not None:
        g = codegen.get("best_s") if codegen.get("status") == "ok" else None
        row(
            "lucidity-gen --check over the stdlib",
            g,
            (
                f"{_fmt(g, 3)} s"
                if g is not None
                else f"ERROR: {codegen.get('error', '')[:80]}"
            ),
            None,
            f"{codegen.get('files', '?')} files",
            None,
            "< 2 s (bench_codegen.py)",
            None if g is None else g < 2.0,
        )
    L.append("")

    L.append("## Results (raw numbers)")
    L.append("")
    L.append(
        "| engine | start-up: first result s | start-up: exit s | lat p50 us | lat p99 us "
        "| fanout jobs/s | nested parents/s | 64 MiB echo MB/s |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    for name in res:
        L.append(
            f"| {name}: {labels.get(name, name)} "
            f"| {_cell(res, name, 'startup', 'first_result_s', 3)} "
            f"| {_cell(res, name, 'startup', 'exit_s', 3)} "
            f"| {_cell(res, name, 'latency', 'p50_us')} "
            f"| {_cell(res, name, 'latency', 'p99_us')} "
            f"| {_cell(res, name, 'fanout', 'per_s', show_n=True)} "
            f"| {_cell(res, name, 'nested', 'per_s', 1, show_n=True)} "
            f"| {_cell(res, name, 'payload', 'mb_per_s')} |"
        )
    L.append("")

    L.append("## lucidity as a ratio to each baseline and peer")
    L.append("")
    L.append(
        "Ratio = lucidity's figure / the other engine's figure, same run. For start-up and "
        "latency (times) lower is better (< 1 = lucidity faster); for fanout, nested and "
        "echo (rates) higher is better (> 1 = lucidity faster)."
    )
    L.append("")
    others = [e for e in BASELINES + PEERS if e in res]
    L.append(
        "| lucidity figure | lucidity | " + " | ".join(f"vs {e}" for e in others) + " |"
    )
    L.append("|---|---|" + "---|" * len(others))
    metrics = [
        ("start-up first result (time)", "startup", "first_result_s", 3),
        ("latency p50 (time)", "latency", "p50_us", 0),
        ("latency p99 (time)", "latency", "p99_us", 0),
        ("fanout jobs/s (rate)", "fanout", "per_s", 0),
        ("nested parents/s (rate)", "nested", "per_s", 1),
        ("64 MiB echo MB/s (rate)", "payload", "mb_per_s", 0),
    ]
    for label, w, key, digits in metrics:
        mine = _val(res, luc, w, key)
        cells = []
        for e in others:
            r = _ratio(mine, _val(res, e, w, key))
            if r is not None:
                cells.append(f"{r:.3g}x")
            elif mine is None:
                cells.append("-")
            else:
                cells.append(_cell(res, e, w, key))
        L.append(f"| {label} | {_fmt(mine, digits)} | " + " | ".join(cells) + " |")
    L.append("")

    if codegen is not None:
        L.append("## Generator")
        L.append("")
        if codegen.get("status") == "ok":
            L.append("`benchmarks/bench_codegen.py` output:")
            L.append("")
            L.append("```")
            L.append(codegen["output"])
            L.append("```")
        else:
            L.append(f"ERROR: {codegen.get('error')}")
        L.append("")

    L.append("## Notes per engine")
    L.append("")
    for name, e in res.items():
        L.append(f"### {name}")
        L.append("")
        L.append(
            f"- {labels.get(name, name)}; status: {e.get('status')}; child wall "
            f"{e.get('child_wall_s', 0):.1f} s"
            + (f"; cluster setup {e['setup_s']:.2f} s" if "setup_s" in e else "")
            + (
                f"; single-core speed just before: {e['single_core_ms']:.1f} ms"
                if "single_core_ms" in e
                else ""
            )
            + (
                f"; 1-min load average just before: {e['loadavg']:.2f}"
                if "loadavg" in e
                else ""
            )
        )
        for w in WORKLOADS:
            d = e.get("workloads", {}).get(w)
            if d is None:
                continue
            if d["status"] == "error":
                L.append(f"- {w}: ERROR: {d['error']}")
            elif d["status"] == "na":
                L.append(f"- {w}: n/a: {d['reason']}")
            else:
                bits = []
                if w == "startup":
                    bits.append(f"first result min {d['first_result_min_s']:.3f} s")
                if w == "latency":
                    bits.append(f"mean {d['mean_us']:.0f} us, max {d['max_us']:.0f} us")
                if w in ("fanout", "nested"):
                    bits.append(f"N={d['n']:,} in {d['seconds']:.2f} s")
                if w == "payload":
                    bits.append(
                        f"median {d['median_s'] * 1e3:.1f} ms, min {d['min_s'] * 1e3:.1f} ms"
                    )
                if d.get("how"):
                    bits.append(d["how"])
                for k, v in (d.get("extra") or {}).items():
                    bits.append(f"{k}: {_fmt(v) if isinstance(v, float) else v}")
                L.append(f"- {w}: " + "; ".join(bits))
        for n in e.get("notes", []):
            L.append(f"- note: {n}")
        L.append("")
    return "\n".join(L) + "\n"


def labels_for(names: list[str]) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            path = os.path.join(HERE, "engines", f"eng_{n}.py")
            with open(path) as f:
                m = re.search(r'^LABEL = "(.*)"$', f.read(), re.M)
            out[n] = m.group(1) if m else n
        except OSError:
            out[n] = n
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="smaller sizes (about 2 minutes)"
    )
    ap.add_argument(
        "--only", default="", help="comma-separated engines (and/or 'codegen')"
    )
    ap.add_argument("--out", help="also write the markdown report here")
    ap.add_argument("--json", help="also write the raw results as JSON here")
    ap.add_argument(
        "--no-codegen", action="store_true", help="skip the generator benchmark"
    )
    ap.add_argument(
        "--logs", help="keep engine logs in this folder (default: a temp folder)"
    )
    ap.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        help="multiply every per-step timeout (e.g. 2 on a slow machine)",
    )
    ap.add_argument(
        "--snapshot",
        metavar="REV",
        help="benchmark lucidity as committed at git REV (e.g. HEAD) instead of "
        "the installed working tree (which others may be editing)",
    )
    args = ap.parse_args()

    for k in TIMEOUTS:
        TIMEOUTS[k] = max(1, round(TIMEOUTS[k] * args.timeout_scale))
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in ENGINES + ["codegen"]]
    if unknown:
        ap.error(f"unknown engine(s) {unknown}; known: {', '.join(ENGINES)}, codegen")
    engines = [e for e in ENGINES if not only or e in only]
    do_codegen = not args.no_codegen and (not only or "codegen" in only)

    wall0 = time.monotonic()
    logdir = args.logs or tempfile.mkdtemp(prefix="lucidity-bench-")
    os.makedirs(logdir, exist_ok=True)
    snap_dir = None
    if args.snapshot:
        snap_dir, snap_commit = snapshot(args.snapshot)
        source = f"snapshot of git {args.snapshot} ({snap_commit})"
    else:
        source = "installed package (the working tree, as it was during the run)"
    try:
        return _run(args, engines, do_codegen, logdir, source, wall0)
    finally:
        if snap_dir:
            shutil.rmtree(snap_dir, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    engines: list[str],
    do_codegen: bool,
    logdir: str,
    source: str,
    wall0: float,
) -> int:
    where = subprocess.run(
        [sys.executable, "-c", "import lucidity; print(lucidity.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        env=common.child_env(),
    )
    source += f"; imported from {where.stdout.strip() or where.stderr.strip()[-200:]}"
    print(f"lucidity: {source}", file=sys.stderr)
    print(f"regenerating benchapp: {regenerate_app()}", file=sys.stderr)
    mach = machine()
    mach["lucidity_source"] = source
    res: dict[str, Any] = {}
    for name in engines:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        speed, load = single_core_ms(), os.getloadavg()[0]
        res[name] = run_engine(name, args.quick, logdir)
        res[name]["single_core_ms"] = speed
        res[name]["loadavg"] = load
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: {res[name]['status']}",
            file=sys.stderr,
            flush=True,
        )
    codegen = None
    if do_codegen:
        print(f"[{time.strftime('%H:%M:%S')}] codegen ...", file=sys.stderr, flush=True)
        codegen = run_codegen(args.quick)
    report = render(
        res, mach, codegen, args, labels_for(engines), time.monotonic() - wall0
    )
    report += f"\nEngine logs: {logdir}\n" if args.logs else ""
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": mach, "results": res, "codegen": codegen},
                f,
                indent=1,
                default=str,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
