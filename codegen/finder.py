"""Walk one module's statements for its `@job` functions (`JobFinder`).

Jobs are found by *qualified name*, resolved from what can decorate a
module-level function: the module's imports and assignments above it, in
order (`lucidity.codegen.marks.Marks`). So `from lucidity import job as task`,
`import lucidity as lu` + `@lu.job` and the like are jobs, while a `job` that
does not resolve to `lucidity.job` (a foreign import, or a rebinding above
the def) is not. No scope analysis of function bodies is needed, which is
most of what a full resolution (libcst's `QualifiedNameProvider`) costs.

What cannot be a job is refused here, as an error pointing at the offending
node: generators, methods, nested functions, lambdas, functions a later
statement of the module replaces, and options `lucidity.codegen.signature`
refuses. Each job found is a `FoundJob`, before module-wide naming.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst

from lucidity.codegen import signature
from lucidity.codegen.marks import (
    DirectCalls,
    Marks,
    blocks,
    bound_names,
    dotted,
    statements,
)
from lucidity.codegen.model import Param
from lucidity.codegen.yields import Yields, first_yield

__all__ = ["FoundJob", "JobFinder"]


@dataclass
class FoundJob:
    """A job as found, before the module-wide naming decisions."""

    name: str
    params: tuple[Param, ...]
    returns: str | None
    options: tuple[tuple[str, str], ...]
    is_async: bool = False
    # Annotation expressions, to find the names they need imported.
    annotations: list[cst.BaseExpression] = field(default_factory=list)


# Decorators that leave a module attribute that is not called with the
# function's parameters (or not a function at all): stacked with @job, the
# worker would not run what the stubs describe.
_NOT_CALLABLE_AS_IS = frozenset(
    {
        "property",
        "staticmethod",
        "classmethod",
        "contextmanager",
        "asynccontextmanager",
        "overload",
    }
)


class JobFinder:
    """Walks a module's statements (not its expressions) for `@job`."""

    def __init__(
        self,
        path: str,
        direct_calls: re.Pattern[str] | None,
        yields: Yields | None = None,
    ) -> None:
        self.path = path
        # Where the defs' yields are; a def it does not know is searched.
        self._yields = yields
        self.searched_bodies = False  # a def's body searched for `yield`
        self._defs = 0
        self.jobs: list[FoundJob] = []
        # (node to point at, message): placed once the walk is over, and
        # only when there are any (positions cost a pass over the tree).
        self.errors: list[tuple[cst.CSTNode | tuple[int, int], str]] = []
        self._direct_calls = direct_calls
        # The module-level names of jobs (name -> its def), to tell when a
        # later statement replaces one.
        self._defined: dict[str, cst.FunctionDef] = {}

    # ---- helpers

    def _error(self, node: cst.CSTNode | tuple[int, int], message: str) -> None:
        self.errors.append((node, message))

    def _job_decorator(
        self, decorators: Sequence[cst.Decorator], marks: Marks
    ) -> tuple[cst.Decorator, cst.Call | None] | None:
        if not marks:
            return None
        for decorator in decorators:
            expr = decorator.decorator
            call = expr if isinstance(expr, cst.Call) else None
            if marks.is_job(call.func if call is not None else expr):
                return decorator, call
        return None

    # ---- statements

    def walk(
        self, body: Sequence[cst.CSTNode], marks: Marks, scope: str | None
    ) -> None:
        """The statements of one block, in order; `scope` is None at module
        level (including its if/try/with blocks), else "def" or "class"."""
        for stmt in body:
            if isinstance(stmt, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
                self._scan(stmt, marks)
                for small in stmt.body:
                    if scope is None:
                        self._replaced(small)
                    marks.bind(small)
            elif isinstance(stmt, cst.FunctionDef):
                self._function(stmt, marks, scope)
            elif isinstance(stmt, cst.ClassDef):
                found = self._job_decorator(stmt.decorators, marks)
                if found is not None:
                    self._error(
                        found[0],
                        f"@job applied to class {stmt.name.value!r}; only "
                        "module-level def functions can be jobs",
                    )
                self._rebound(stmt.name.value, stmt, scope)
                self.walk(statements(stmt.body), marks.copy(), "class")
                marks.unbind(stmt.name.value)
            else:
                self._compound(stmt, marks, scope)

    def _function(self, node: cst.FunctionDef, marks: Marks, scope: str | None) -> None:
        name = node.name.value
        index, self._defs = self._defs, self._defs + 1
        found = self._job_decorator(node.decorators, marks)
        if found is None:
            self._rebound(name, node, scope)
        else:
            self._job(node, found, scope, index)
        inner = marks.copy()
        for param in signature.all_params(node.params):
            inner.unbind(param.name.value)
        self.walk(statements(node.body), inner, "def")
        marks.unbind(name)

    def _compound(self, stmt: cst.CSTNode, marks: Marks, scope: str | None) -> None:
        """if/for/while/try/with/match: their blocks bind in this scope."""
        if isinstance(stmt, (cst.If, cst.While)):
            self._scan(stmt.test, marks)
        elif isinstance(stmt, cst.For):
            self._scan(stmt.iter, marks)
            for bound in bound_names(stmt.target):
                marks.unbind(bound)
        elif isinstance(stmt, cst.With):
            for item in stmt.items:
                self._scan(item.item, marks)
                if item.asname is not None:
                    for bound in bound_names(item.asname.name):
                        marks.unbind(bound)
        for block in blocks(stmt):
            self.walk(block, marks, scope)
        if isinstance(stmt, (cst.Try, cst.TryStar)):
            for handler in stmt.handlers:
                if handler.name is not None:
                    for bound in bound_names(handler.name.name):
                        marks.unbind(bound)

    def _scan(self, node: cst.CSTNode, marks: Marks) -> None:
        # Direct calls of `job(...)` are looked for only in files whose text
        # has one (the pattern of the names ever bound to it): visiting every
        # expression of every file would cost as much as parsing it.
        if self._direct_calls is not None and marks:
            node.visit(DirectCalls(self._error, marks))

    # ---- later statements replacing a job (C accelerators, mostly)

    def _rebound(self, name: str, node: cst.CSTNode, scope: str | None) -> None:
        if scope is None and name in self._defined:
            self._replaced_by(name, node, f"a later definition of {name!r}")

    def _replaced(self, small: cst.BaseSmallStatement) -> None:
        if not self._defined:
            return
        if isinstance(small, cst.ImportFrom) and isinstance(
            small.names, cst.ImportStar
        ):
            for name in list(self._defined):
                self._replaced_by(
                    name,
                    small,
                    f"{signature.code(small)!r}, which may replace it (as a C accelerator "
                    "module does)",
                )
            return
        names: list[str] = []
        if isinstance(small, (cst.Import, cst.ImportFrom)) and not isinstance(
            small.names, cst.ImportStar
        ):
            for alias in small.names:
                if alias.asname is not None:
                    names.extend(bound_names(alias.asname.name))
                elif isinstance(small, cst.Import):
                    names.append(dotted(alias.name).split(".")[0])
                else:
                    names.append(signature.code(alias.name))
        elif isinstance(small, cst.Assign):
            for target in small.targets:
                names.extend(bound_names(target.target))
        elif isinstance(small, (cst.AnnAssign, cst.AugAssign)):
            names.extend(bound_names(small.target))
        for name in names:
            if name in self._defined:
                self._replaced_by(name, small, f"{signature.code(small)!r}")

    def _replaced_by(self, name: str, node: cst.CSTNode, what: str) -> None:
        del self._defined[name]
        self.jobs = [job for job in self.jobs if job.name != name]
        self._error(
            node,
            f"@job function {name!r} is replaced after its def by {what}: "
            "workers run the module attribute, which is then not this function; "
            "mark the function that stays (or move the def after this statement)",
        )

    # ---- one job

    def _job(
        self,
        node: cst.FunctionDef,
        found: tuple[cst.Decorator, cst.Call | None],
        scope: str | None,
        index: int = -1,
    ) -> None:
        name = node.name.value
        before = len(self.errors)
        if scope == "class":
            self._error(
                node,
                f"@job function {name!r} is a method; only module-level functions "
                "can be jobs (they are run by reference): move it out of the class",
            )
        elif scope is not None:
            self._error(
                node,
                f"@job function {name!r} is nested inside a function; only "
                "module-level functions can be jobs (they are run by reference): "
                "move it to the module level",
            )
        yield_node: cst.CSTNode | tuple[int, int] | None
        yields = self._yields
        if yields is not None and yields.knows(index, name):
            yield_node = yields.first(index)
        else:
            self.searched_bodies = True
            yield_node = first_yield(node.body)
        if yield_node is not None:
            self._error(
                yield_node,
                f"@job function {name!r} is a generator; jobs must return their "
                "result: return a list instead of yielding",
            )
        for decorator in node.decorators:
            expr = decorator.decorator
            last = expr.attr.value if isinstance(expr, cst.Attribute) else None
            if isinstance(expr, cst.Name):
                last = expr.value
            if last in _NOT_CALLABLE_AS_IS:
                self._error(
                    decorator,
                    f"@job function {name!r} is also decorated @{last}, which "
                    "makes the module attribute something other than a function "
                    "called with these parameters; put @job on a plain function "
                    "and call that one",
                )
        params = signature.params(node.params)
        call = found[1]
        options = signature.options(call, self._error) if call is not None else ()
        if len(self.errors) > before:
            return
        returns = node.returns.annotation if node.returns is not None else None
        annotations = [
            p.annotation.annotation
            for p in signature.all_params(node.params)
            if p.annotation is not None
        ]
        if returns is not None:
            annotations.append(returns)
        if scope is None:
            if name in self._defined:
                # Defined again (another branch of an `if`, mostly): the
                # module attribute is the last definition.
                self.jobs = [job for job in self.jobs if job.name != name]
            self._defined[name] = node
        self.jobs.append(
            FoundJob(
                name=name,
                params=params,
                returns=signature.code(returns) if returns is not None else None,
                options=options,
                is_async=node.asynchronous is not None,
                annotations=annotations,
            )
        )
