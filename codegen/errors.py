"""The one error type of `lucidity-gen`: a problem in the user's source.

Every message points at `file:line:col` (both 1-based, as editors count) and
says what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SourceError"]


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
