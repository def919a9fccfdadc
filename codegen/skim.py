"""What of a source libcst must parse: the bodies that can hold a job.

libcst parses many times slower than CPython, and most of a module is the
bodies of functions and classes, which the collector only walks for `@job`
(a method or a nested function marked is an error) and for direct calls of
`job(...)`. Neither can be in a body that names none of the names the text
may bind to `lucidity.job` or to `lucidity` (`marks.marker_names`, a
superset). `skim` finds those bodies with CPython's parser and gives libcst
the source with each one replaced by `pass` on its first line and blank
lines after it, so that every line and column the collector reports is
where it is in the file.
"""

from __future__ import annotations

import ast
import bisect
import re
from dataclasses import dataclass, field

from lucidity.codegen.marks import marker_names

__all__ = ["Skimmed", "skim"]

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_BLOCKS = ("body", "orelse", "finalbody")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
# A coding cookie may sit on line 1 or 2: those lines are never blanked.
_FIRST_LINE = 3


@dataclass(frozen=True)
class Skimmed:
    """The source libcst parses, CPython's tree of the whole one, and the
    defs and classes whose bodies are left out."""

    source: bytes
    tree: ast.Module
    elided: frozenset[int] = field(default_factory=frozenset)  # id() of nodes


def skim(source: bytes) -> Skimmed | None:
    """`source` with the bodies that cannot hold a job left out; None when
    CPython cannot parse it or it is not UTF-8 (libcst then sees it whole,
    and reports what is wrong with it)."""
    try:
        text = source.decode("utf-8")
        tree = ast.parse(source)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None
    jobs, modules = marker_names(text)
    names = "|".join(re.escape(n) for n in sorted(jobs | modules))
    lines = _LINE.findall(source)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    # Lines (1-based) that name a marker; a body holding one is kept.
    marked = sorted(
        {
            bisect.bisect_right(starts, m.start())
            for m in re.finditer(rf"(?<![\w.])(?:{names})(?!\w)".encode(), source)
        }
    )
    elided: set[int] = set()
    todo: list[list[ast.stmt]] = [tree.body]
    while todo:
        for stmt in todo.pop():
            if isinstance(stmt, _SCOPES):
                if _elide(stmt, lines, marked):
                    elided.add(id(stmt))
                    continue
            for name in _BLOCKS:
                block = getattr(stmt, name, None)
                if block:
                    todo.append(block)
            for handler in getattr(stmt, "handlers", ()):
                todo.append(handler.body)
            for case in getattr(stmt, "cases", ()):
                todo.append(case.body)
    if not elided:
        return Skimmed(source, tree)
    return Skimmed(b"".join(lines), tree, frozenset(elided))


def _elide(
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef,
    lines: list[bytes],
    marked: list[int],
) -> bool:
    """Blank `node`'s body in `lines` if it starts on a line of its own and
    names no marker; whether it did."""
    head = node.body[0]
    # A def's or class's lineno is its keyword's, below its decorators.
    first = min([d.lineno for d in getattr(head, "decorator_list", ())] + [head.lineno])
    last = node.end_lineno
    if last is None or first < _FIRST_LINE or first > len(lines) or last > len(lines):
        return False
    lead = lines[first - 1][: head.col_offset]
    if lead.strip() or not lead:
        return False  # the body starts on the header's line
    i = bisect.bisect_left(marked, first)
    if i < len(marked) and marked[i] <= last:
        return False
    for number in range(first, last + 1):
        line = lines[number - 1]
        ending = line[len(line.rstrip(b"\r\n")) :]
        lines[number - 1] = (lead + b"pass" if number == first else b"") + ending
    return True
