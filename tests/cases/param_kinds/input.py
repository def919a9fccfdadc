"""Every parameter kind, repeated in order; annotations from TYPE_CHECKING and strings."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from lucidity import job

if TYPE_CHECKING:
    from decimal import Decimal


@job
@functools.lru_cache(maxsize=None)
def every(
    a: int,
    /,
    b: "Decimal",
    c: str = "c",
    *rest: float,
    scale: float = 1.0,
    tag: str,
    **extra: "Decimal",
) -> list[float]:
    return [a, float(b), *rest]


@job
def keywords(*, k: int, m: int = 2) -> int:
    return k * m


@job
def varargs(*values: int) -> int:
    return sum(values)


@job
def options(**settings: str) -> dict[str, str]:
    return dict(settings)


@job
def posonly(x: bytes, y: int = 0, /) -> int:
    return len(x) + y


@job
def untyped(a, *args, k=None, **kw):  # type: ignore[no-untyped-def]
    return a
