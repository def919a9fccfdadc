"""Annotations naming imported types and a class of the module itself."""

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Optional

from lucidity import job


@dataclass
class Point:
    x: Decimal
    y: Decimal


@job
def centroid(
    points: Sequence[Point], weights: Optional["Mapping[str, Decimal]"] = None
) -> Point:
    n = Decimal(len(points))
    return Point(
        sum((p.x for p in points), Decimal()) / n,
        sum((p.y for p in points), Decimal()) / n,
    )


@job
def stamp(when: datetime.datetime, extra: dict[str, Any]) -> "datetime.date":
    return when.date()
