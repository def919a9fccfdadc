"""`@job`: marks a module-level function as a job and validates its options.

At run time the decorator returns the function itself, so a plain call is a
plain call, as in the seed; the stubs come from `lucidity-gen`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from lucidity._options import validate_options

__all__ = ["job"]

F = TypeVar("F", bound=Callable[..., Any])


@overload
def job(func: F, /) -> F: ...


@overload
def job(func: None = None, /, **options: Any) -> Callable[[F], F]: ...


def job(func: F | None = None, /, **options: Any) -> F | Callable[[F], F]:
    """Mark `func` as a job; `@job` bare or `@job(memory=..., fanout=...)`."""
    validated = validate_options(options)

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@job applies to functions, not {type(f).__name__}")
        f.__lucidity_options__ = validated  # type: ignore[attr-defined]
        return f

    if func is None:
        return mark
    if options:
        raise TypeError("@job takes options as keywords only: @job(fanout='random')")
    return mark(func)
