"""How fast `lucidity-gen --check` walks a large tree with no jobs.

Runs `lucidity-gen --check` in-process over the CPython standard library
(about 1,800 files, none with a job; target: under 2 s), and compares it with
what parsing every one of those files with libcst would cost, estimated from
a sample. The ratio is what the `b"lucidity"` pre-filter saves.

    python benchmarks/bench_codegen.py [TREE] [--sample N] [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sysconfig
import time

import libcst as cst

from lucidity.codegen import discover
from lucidity.codegen.cli import main as lucidity_gen


def _time_check(tree: str) -> tuple[float, int]:
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = lucidity_gen(["--check", tree])
    return time.perf_counter() - start, status


def _time_parse(files: list[str]) -> float:
    start = time.perf_counter()
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        try:
            cst.parse_module(data)
        except cst.ParserSyntaxError:
            pass  # a few test files are broken on purpose
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    files = list(discover.iter_files([args.tree]))
    size = sum(os.path.getsize(f) for f in files)
    print(f"tree: {args.tree} ({len(files)} files, {size / 1e6:.1f} MB)")

    runs = [_time_check(args.tree) for _ in range(args.repeat)]
    best = min(seconds for seconds, _ in runs)
    status = runs[-1][1]
    print(f"lucidity-gen --check: best of {args.repeat}: {best:.3f} s (exit {status})")

    sample = random.Random(0).sample(files, min(args.sample, len(files)))
    parsed = _time_parse(sample)
    estimate = parsed * len(files) / len(sample)
    print(
        f"libcst parse of {len(sample)} sampled files: {parsed:.2f} s; "
        f"all {len(files)} estimated: {estimate:.1f} s"
    )
    print(f"ratio (parse everything / lucidity-gen --check): {estimate / best:.0f}x")
    verdict = "OK" if best < 2.0 else "TOO SLOW"
    print(f"target < 2 s: {verdict}")


if __name__ == "__main__":
    main()
