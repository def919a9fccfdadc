"""The `lucidity-gen` command: arguments, output, and black's exit codes.

0: done, or (with `--check`) nothing is stale; 1: `--check` found stale,
missing or dangling generated files (or, with `--exit-non-zero-on-write`, as
the pre-commit hook runs it, some were written or removed); 2: usage or source errors (nothing is
written); 123: an internal error, a bug in `lucidity-gen`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Sequence

from lucidity.codegen import cache
from lucidity.codegen.write import DEFAULT_SUFFIX, Action, Plan, apply, plan

__all__ = ["main"]

EXIT_OK = 0
EXIT_STALE = 1
EXIT_ERROR = 2
EXIT_INTERNAL = 123


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lucidity-gen",
        description=(
            "Write the stub module (pkg/mod_jobs.py) of every module with @job "
            "functions under PATH, and remove the stubs of modules without jobs."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and print a diff if any stub module is stale",
    )
    parser.add_argument(
        "--diff",
        action="store_true",
        help="write nothing; print a diff of what would change",
    )
    parser.add_argument(
        "--exit-non-zero-on-write",
        action="store_true",
        help="exit 1 if any file was written or removed (so a pre-commit hook fails "
        "until the change is staged)",
    )
    parser.add_argument(
        "--suffix",
        default=DEFAULT_SUFFIX,
        help=f"name suffix of generated modules (default: {DEFAULT_SUFFIX})",
    )
    parser.add_argument(
        "-W",
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes generating stale files (default: one per CPU when many)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no summary line on stderr"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lucidity-gen`; returns the exit status."""
    args = _parser().parse_args(argv)
    if not re.fullmatch(r"\w+", args.suffix):
        print(
            f"error: --suffix {args.suffix!r} must be letters, digits or '_' "
            "(it becomes part of a module name)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers {args.workers}: must be 1 or more", file=sys.stderr)
        return EXIT_ERROR
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        for path in missing:
            print(f"error: {path}: no such file or directory", file=sys.stderr)
        return EXIT_ERROR
    try:
        return _run(args)
    except Exception:  # a bug of ours, not of the user's sources
        traceback.print_exc()
        print("error: internal error in lucidity-gen (please report)", file=sys.stderr)
        return EXIT_INTERNAL


def _run(args: argparse.Namespace) -> int:
    known = cache.load()
    result = plan(
        args.paths, suffix=args.suffix, workers=args.workers, no_jobs=set(known)
    )
    cache.save(known, result.no_jobs)
    if result.errors:
        for error in result.errors:
            print(error, file=sys.stderr)
        n = len(result.errors)
        print(
            f"{n} error{'s' if n != 1 else ''}; no file written",
            file=sys.stderr,
        )
        return EXIT_ERROR
    dry = args.check or args.diff
    if dry:
        diff = result.diff()
        if diff and (args.diff or args.check):
            sys.stdout.write(diff)
    else:
        apply(result)
    if not args.quiet:
        print(_summary(result, dry), file=sys.stderr)
    if args.exit_non_zero_on_write and result.stale and not dry:
        print("stub modules changed: review them and stage them", file=sys.stderr)
    if result.stale and (args.check or (args.exit_non_zero_on_write and not dry)):
        return EXIT_STALE
    return EXIT_OK


def _summary(result: Plan, dry: bool) -> str:
    written = result.count(Action.WRITE)
    removed = result.count(Action.REMOVE)
    unchanged = result.count(Action.UNCHANGED)
    files = f"{written} file{'s' if written != 1 else ''}"
    if dry:
        return f"would write {files}, would remove {removed}, {unchanged} unchanged"
    return f"wrote {files}, removed {removed}, {unchanged} unchanged"
