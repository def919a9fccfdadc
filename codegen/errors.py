"""The one error type of `lucidity-gen`: a problem in the user's source.

Every message points at `file:line:col` (both 1-based, as editors count) and
says what to do about it. `Positions` finds where a libcst node is;
`syntax_error` words a file that does not parse.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

__all__ = ["Positions", "SourceError", "syntax_error"]


@dataclass(frozen=True)
class SourceError:
    """Why a source file cannot be turned into stubs; errors are data, collected
    over every input so that one run reports them all."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class Positions:
    """Where nodes are, worked out on first use: only files with errors pay
    for the pass over the whole tree that positions take."""

    def __init__(self, tree: cst.Module) -> None:
        self._tree = tree
        self._ranges: Mapping[cst.CSTNode, CodeRange] | None = None

    def __getitem__(self, node: cst.CSTNode) -> CodeRange:
        if self._ranges is None:
            wrapper = MetadataWrapper(self._tree, unsafe_skip_copy=True)
            self._ranges = wrapper.resolve(PositionProvider)
        return self._ranges[node]

    def error(
        self, path: str, node: cst.CSTNode | tuple[int, int], message: str
    ) -> SourceError:
        if isinstance(node, tuple):
            return SourceError(path, node[0], node[1], message)
        where = self[node].start
        return SourceError(path, where.line, where.column + 1, message)


def syntax_error(source: bytes, path: str, exc: cst.ParserSyntaxError) -> SourceError:
    """The error of a file libcst cannot parse."""
    # CPython's own parser places the caret better than libcst's does (libcst
    # reports where it gave up, often the next line); prefer it when it agrees
    # that the file is broken.
    try:
        compile(source, path, "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError as err:
        if err.lineno is not None:
            message = err.msg
            return SourceError(
                path,
                err.lineno,
                max(err.offset or 1, 1),
                f"cannot parse: {message}; fix the syntax error and run again",
            )
    except (ValueError, UnicodeDecodeError):
        pass
    detail = exc.message.splitlines()[0] if exc.message else "invalid syntax"
    return SourceError(
        path,
        exc.raw_line,
        exc.raw_column + 1,
        f"cannot parse: {detail}; fix the syntax error and run again",
    )
