"""Each kind of default the stubs cannot repeat: a sentinel, its text in the docstring."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    x: float
    y: float


ORIGIN = Point(0, 0)

from lucidity import job  # noqa: E402


@job
def distance(p: Point, q: Point = ORIGIN, *, scale: float = 1.0) -> float:
    return scale * ((p.x - q.x) ** 2 + (p.y - q.y) ** 2) ** 0.5


@job
def access(
    path: str,
    sep: str = os.sep,
    /,
    mode: int = os.F_OK | os.X_OK,
    *,
    start: Point = Point(0, 0),
    pattern: re.Pattern[str] = re.compile(r"\d+ \"quoted\""),
    seen: list[str] = [],
    table: dict[str, int] = {
        "a": 1,
        "b": 2,
    },
    key: object = lambda x: x,
    limit: int = -1,
) -> bool:
    return bool(path)
