"""How fast `lucidity-gen` is over code with jobs, against black and libcst.

Builds a package of 28 standard-library modules copied to a temporary folder,
with `@job` on every module-level function the generator accepts (it marks
them all, asks the generator, and takes the mark off each one it refuses,
reporting how many), then measures in the same run, each as a fresh process
(interpreter start-up and imports included, as a user or a hook pays them):

- fresh `lucidity-gen` (no stub module exists yet), over one process per CPU
  (the default) and over one (`-W 1`), which is what the pool gives;
- `lucidity-gen --check` over the unchanged tree;
- a plain `lucidity-gen` run over the unchanged tree;
- `black --check` of the same sources (its cache in an empty folder);
- a plain libcst parse of the same sources.

The targets (issue 13) are ratios to `black --check`: fresh generation at
most 0.25x, `--check` and a plain run over an unchanged tree at most 0.05x.

    python benchmarks/codegen.py [--repeat N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

from lucidity.codegen.write import plan

# Large, plain-Python modules that exist on every supported version.
MODULES = (
    "argparse ast calendar configparser csv dataclasses datetime _pydecimal "
    "difflib fractions ftplib gettext imaplib inspect ipaddress logging/__init__ "
    "mailbox optparse pathlib pickle pprint shutil smtplib statistics tarfile "
    "textwrap typing zipfile"
).split()
PACKAGE = "stdjobs"
DECORATOR = "lucidity_job"
IMPORT = f"from lucidity import job as {DECORATOR}\n"


def _insert_after(tree: ast.Module) -> int:
    """The line after the module docstring and `from __future__` imports."""
    line = 0
    for node in tree.body:
        docstring = (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if not (docstring or future):
            break
        line = node.end_lineno or node.lineno
    return line


def _mark(source: str, skip: set[str]) -> tuple[str, int]:
    """`source` with the import and `@job` on its module-level functions."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    marks = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name not in skip:
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            marks.append(first - 1)
    for index in sorted(marks, reverse=True):
        lines.insert(index, f"@{DECORATOR}\n")
    lines.insert(_insert_after(tree), IMPORT)
    return "".join(lines), len(marks)


def _function_at(source: str, line: int) -> str | None:
    """The module-level function of the (marked) source holding `line`."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            if start - 1 <= line <= (node.end_lineno or node.lineno):
                return node.name
    return None


_NAMED = re.compile(r"@job function '(\w+)'")


def build(root: str) -> tuple[list[str], int, int]:
    """Lay out the package; returns its sources, jobs marked, and refusals."""
    stdlib = sysconfig.get_paths()["stdlib"]
    package = os.path.join(root, PACKAGE)
    os.makedirs(package)
    open(os.path.join(package, "__init__.py"), "w").close()
    originals: dict[str, str] = {}
    for name in MODULES:
        with open(os.path.join(stdlib, f"{name}.py"), encoding="utf-8") as f:
            target = os.path.join(package, name.replace("/__init__", "") + ".py")
            originals[target] = f.read()
    skips: dict[str, set[str]] = {path: set() for path in originals}
    refused = 0
    while True:
        marked = 0
        for path, source in originals.items():
            text, count = _mark(source, skips[path])
            marked += count
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        errors = plan([package]).errors
        if not errors:
            return sorted(originals), marked, refused
        progress = False
        for error in errors:
            # An error names its job, or (a refusal) points into its def; a
            # job replaced by a later statement is pointed at that statement.
            named = _NAMED.match(error.message)
            if named is not None:
                name: str | None = named.group(1)
            else:
                with open(error.path, encoding="utf-8") as f:
                    name = _function_at(f.read(), error.line)
            if name is not None and name not in skips[error.path]:
                skips[error.path].add(name)
                refused += 1
                progress = True
        if not progress:
            raise SystemExit("cannot mark the tree:\n" + "\n".join(map(str, errors)))


def _run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, check=False)
    return time.perf_counter() - start, proc.returncode


def _remove_stubs(package: str) -> None:
    for name in os.listdir(package):
        if name.endswith("_jobs.py"):
            os.remove(os.path.join(package, name))


_PARSE = (
    "import sys, libcst\n"
    "for path in sys.argv[1:]:\n"
    "    libcst.parse_module(open(path, 'rb').read())\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="best of N (3)")
    parser.add_argument("--keep", help="build the tree in DIR and keep it")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="lucidity-bench-codegen-")
    try:
        _measure(root, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _measure(root: str, repeat: int) -> None:
    sources, jobs, refused = build(root)
    package = os.path.join(root, PACKAGE)
    size = sum(os.path.getsize(p) for p in sources)
    print(
        f"tree: {len(sources)} modules, {size / 1e6:.2f} MB, {jobs} jobs "
        f"({refused} functions refused by the generator, left unmarked); "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    gen = [sys.executable, "-m", "lucidity.codegen", "-q"]
    cache = tempfile.mkdtemp(prefix="lucidity-bench-black-cache-")
    black_env = {**os.environ, "BLACK_CACHE_DIR": cache}
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float, status: int, ok: set[int]) -> None:
        if status not in ok:
            raise SystemExit(f"{name}: unexpected exit status {status}")
        times.setdefault(name, []).append(seconds)

    try:
        # Interleaved, so that a swing of the machine's speed hits all alike.
        for _ in range(repeat):
            _remove_stubs(package)
            record(
                "fresh lucidity-gen -W 1 (one process)",
                *_run(gen + ["-W", "1", package]),
                {0},
            )
            _remove_stubs(package)
            record("fresh lucidity-gen", *_run(gen + [package]), {0})
            record(
                "lucidity-gen --check, unchanged",
                *_run(gen + ["--check", package]),
                {0},
            )
            record("lucidity-gen, unchanged", *_run(gen + [package]), {0})
            shutil.rmtree(cache, ignore_errors=True)
            os.makedirs(cache)
            black = [sys.executable, "-m", "black", "--check", "-q", *sources]
            record("black --check", *_run(black, black_env), {0, 1})
            record("libcst parse", *_run([sys.executable, "-c", _PARSE, *sources]), {0})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    best = {name: min(values) for name, values in times.items()}
    baseline = best["black --check"]
    targets = {
        "fresh lucidity-gen": 0.25,
        "lucidity-gen --check, unchanged": 0.05,
        "lucidity-gen, unchanged": 0.05,
    }
    print(f"best of {repeat}, each a fresh process:")
    print("| step | seconds | x black --check | target |")
    print("|---|---:|---:|---|")
    for name, seconds in best.items():
        target = targets.get(name)
        verdict = ""
        if target is not None:
            met = "met" if seconds / baseline <= target else "NOT met"
            verdict = f"<= {target}x: {met}"
        print(f"| {name} | {seconds:.3f} | {seconds / baseline:.3f} | {verdict} |")


if __name__ == "__main__":
    main()
