"""Whether a function is a generator, and where its first own `yield` is.

CPython's parser answers for every def of a file many times faster than a
visit of libcst's tree (`Yields`); the visit (`first_yield`) is the fallback
for a def it does not know.
"""

from __future__ import annotations

import ast

import libcst as cst

__all__ = ["Yields", "first_yield"]


class _YieldFinder(cst.CSTVisitor):
    """The first `yield` of a function body itself, not of the defs inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: cst.CSTNode | None = None

    def visit_Yield(self, node: cst.Yield) -> bool:
        if self.found is None:
            self.found = node
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_BLOCKS = ("body", "orelse", "finalbody")


class Yields:
    """Where each def's first own `yield` is, from CPython's parser, which
    parses many times faster than libcst's tree can be visited; defs are
    numbered in source order, as `JobFinder` meets them."""

    def __init__(
        self,
        source: bytes,
        text: str,
        tree: ast.Module | None = None,
        elided: frozenset[int] = frozenset(),
    ) -> None:
        """`tree`: CPython's tree of `source`, if parsed already; `elided`:
        the id() of its defs and classes whose bodies libcst does not see
        (`skim`), so that the defs are numbered as the walk meets them."""
        # None: the source has no `yield` at all, so no def is a generator.
        self.defs: list[ast.FunctionDef | ast.AsyncFunctionDef] | None = None
        self.usable = True
        self._lines: list[str] = []
        if b"yield" not in source:
            return
        if tree is None:
            try:
                tree = ast.parse(source)
            except (SyntaxError, ValueError):
                self.usable = False  # libcst parsed what CPython cannot
                return
        self._lines = text.splitlines()
        # Defs are statements: only statements' blocks need searching for them.
        defs: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        blocks: list[list[ast.stmt]] = [tree.body]
        while blocks:
            for stmt in blocks.pop():
                if isinstance(stmt, _SCOPES[:2]):
                    defs.append(stmt)
                if id(stmt) in elided:
                    continue
                for name in _BLOCKS:
                    block = getattr(stmt, name, None)
                    if block:
                        blocks.append(block)
                for handler in getattr(stmt, "handlers", ()):
                    blocks.append(handler.body)
                for case in getattr(stmt, "cases", ()):
                    blocks.append(case.body)
        defs.sort(key=lambda n: (n.lineno, n.col_offset))
        self.defs = defs

    def knows(self, index: int, name: str) -> bool:
        defs = self.defs
        if not self.usable:
            return False
        return defs is None or (0 <= index < len(defs) and defs[index].name == name)

    def first(self, index: int) -> tuple[int, int] | None:
        """(line, column) of the first own `yield` of def number `index`."""
        if self.defs is None:
            return None
        first: ast.expr | None = None
        todo: list[ast.AST] = list(self.defs[index].body)
        while todo:
            child = todo.pop()
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                if first is None or (child.lineno, child.col_offset) < (
                    first.lineno,
                    first.col_offset,
                ):
                    first = child
            elif not isinstance(child, _SCOPES):
                todo.extend(ast.iter_child_nodes(child))
        if first is None:
            return None
        # CPython's column counts UTF-8 bytes, ours characters.
        lines = self._lines
        line = lines[first.lineno - 1] if first.lineno <= len(lines) else ""
        column = len(line.encode()[: first.col_offset].decode(errors="replace"))
        return first.lineno, column + 1


def first_yield(body: cst.BaseSuite) -> cst.CSTNode | None:
    finder = _YieldFinder()
    body.visit(finder)
    return finder.found
