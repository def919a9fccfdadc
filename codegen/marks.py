"""What `@job` means at each point of a module, from its statements alone.

`Marks` follows the names bound to `lucidity.job` and to the `lucidity`
module through a block's imports and assignments, in order: what decorates a
def is resolved from what is above it, with no scope analysis of function
bodies (most of what a full resolution costs). Also: the blocks of compound
statements, and the direct calls of `job(...)` (looked for only in files
whose text may have one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

import libcst as cst

__all__ = [
    "DirectCalls",
    "Marks",
    "blocks",
    "bound_names",
    "direct_call_pattern",
    "dotted",
    "marker_names",
    "statements",
]

_EMPTY = cst.Module(body=[])


def _code(node: cst.CSTNode) -> str:
    return _EMPTY.code_for_node(node)


class Marks:
    """What means `lucidity.job` at one point of a scope, statement by
    statement from its top: names bound to `lucidity.job` itself, and names
    bound to the `lucidity` module. Any other binding of a name unmarks it."""

    __slots__ = ("jobs", "modules")

    def __init__(self, jobs: set[str], modules: set[str]) -> None:
        self.jobs = jobs
        self.modules = modules

    def copy(self) -> Marks:
        return Marks(set(self.jobs), set(self.modules))

    def __bool__(self) -> bool:
        return bool(self.jobs or self.modules)

    def is_job(self, expr: cst.BaseExpression) -> bool:
        if isinstance(expr, cst.Name):
            return expr.value in self.jobs
        return (
            isinstance(expr, cst.Attribute)
            and expr.attr.value == "job"
            and isinstance(expr.value, cst.Name)
            and expr.value.value in self.modules
        )

    def unbind(self, name: str) -> None:
        self.jobs.discard(name)
        self.modules.discard(name)

    def bind(self, small: cst.BaseSmallStatement) -> None:
        """What a simple statement binds, in its scope."""
        if isinstance(small, cst.Import):
            for alias in small.names:
                full = dotted(alias.name)
                if alias.asname is not None:
                    bound = _code(alias.asname.name)
                    self.unbind(bound)
                    if full == "lucidity":
                        self.modules.add(bound)
                else:
                    # `import lucidity.x` binds `lucidity`, the package.
                    root = full.split(".")[0]
                    self.unbind(root)
                    if root == "lucidity":
                        self.modules.add(root)
        elif isinstance(small, cst.ImportFrom):
            if isinstance(small.names, cst.ImportStar):
                return  # names unknown here; `_Replaced` reports what follows
            module = None if small.module is None else dotted(small.module)
            for alias in small.names:
                name = _code(alias.name)
                bound = name if alias.asname is None else _code(alias.asname.name)
                self.unbind(bound)
                if not small.relative and module == "lucidity" and name == "job":
                    self.jobs.add(bound)
        elif isinstance(small, cst.Assign):
            for target in small.targets:
                for bound in bound_names(target.target):
                    self.unbind(bound)
        elif isinstance(small, (cst.AnnAssign, cst.AugAssign)):
            for bound in bound_names(small.target):
                self.unbind(bound)
        elif isinstance(small, cst.Del):
            for bound in bound_names(small.target):
                self.unbind(bound)


def dotted(node: cst.Attribute | cst.Name) -> str:
    if isinstance(node, cst.Name):
        return node.value
    value = node.value
    head = dotted(value) if isinstance(value, (cst.Attribute, cst.Name)) else ""
    return f"{head}.{node.attr.value}"


def bound_names(target: cst.BaseExpression) -> Iterator[str]:
    if isinstance(target, cst.Name):
        yield target.value
    elif isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            yield from bound_names(element.value)
    elif isinstance(target, cst.StarredElement):
        yield from bound_names(target.value)


class DirectCalls(cst.CSTVisitor):
    """`job(...)` called rather than used as a decorator: `f = job(lambda
    x: x)`, `f = job(fanout="random")(g)`. Options alone (`job(memory=...)`)
    only build a decorator, which is harmless here."""

    def __init__(self, error: Callable[[cst.CSTNode, str], None], marks: Marks) -> None:
        super().__init__()
        self.error = error
        self.marks = marks

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        marks = self.marks
        applies_job = marks.is_job(func) or (
            isinstance(func, cst.Call) and marks.is_job(func.func)
        )
        if not applies_job:
            return
        for arg in node.args:
            if arg.keyword is not None or arg.star:
                continue
            if isinstance(arg.value, cst.Lambda):
                self.error(
                    arg.value,
                    "@job applied to a lambda; jobs are run by reference "
                    "('pkg.mod:f'): define a module-level def and decorate it "
                    "with @job",
                )
            else:
                self.error(
                    node,
                    "job(...) called directly; lucidity-gen only sees @job used as "
                    "a decorator: put @job above a module-level def",
                )


def statements(suite: cst.BaseSuite) -> Sequence[cst.CSTNode]:
    # `def f(): ...` on one line has a suite of small statements.
    return suite.body if isinstance(suite, cst.IndentedBlock) else [suite]


def blocks(stmt: cst.CSTNode) -> Iterator[Sequence[cst.CSTNode]]:
    """The blocks of a compound statement other than def and class."""
    if isinstance(stmt, cst.If):
        yield statements(stmt.body)
        orelse = stmt.orelse
        if isinstance(orelse, cst.If):
            yield [orelse]
        elif orelse is not None:
            yield statements(orelse.body)
    elif isinstance(stmt, (cst.For, cst.While)):
        yield statements(stmt.body)
        if stmt.orelse is not None:
            yield statements(stmt.orelse.body)
    elif isinstance(stmt, (cst.Try, cst.TryStar)):
        yield statements(stmt.body)
        for handler in stmt.handlers:
            yield statements(handler.body)
        if stmt.orelse is not None:
            yield statements(stmt.orelse.body)
        if stmt.finalbody is not None:
            yield statements(stmt.finalbody.body)
    elif isinstance(stmt, cst.With):
        yield statements(stmt.body)
    elif isinstance(stmt, cst.Match):
        for case in stmt.cases:
            yield statements(case.body)


def direct_call_pattern(text: str) -> re.Pattern[str] | None:
    """A pattern of `name(` for every name that may be bound to `job` or to
    the `lucidity` module, on a line that is not a decorator; None when the
    text has no such line (nearly every file)."""
    jobs, modules = marker_names(text)
    alternatives = [re.escape(n) for n in sorted(jobs)]
    alternatives += [rf"{re.escape(n)}\s*\.\s*job" for n in sorted(modules)]
    if not alternatives:
        return None
    pattern = re.compile(
        rf"^(?![ \t]*@).*?(?<![\w.])(?:{'|'.join(alternatives)})\s*\(", re.M
    )
    return pattern if pattern.search(text) else None


_JOB_AS = re.compile(r"\bjob\s+as\s+(\w+)")
_LUCIDITY_AS = re.compile(r"\blucidity\s+as\s+(\w+)")


def marker_names(text: str) -> tuple[set[str], set[str]]:
    """Names the text may bind to `lucidity.job`, and to `lucidity` (a
    superset: it only decides whether to look for direct calls)."""
    jobs = {"job", *_JOB_AS.findall(text)}
    modules = {"lucidity", *_LUCIDITY_AS.findall(text)}
    return jobs, modules
