"""The trivial tasks every engine runs (importable by its workers as `engines.tasks`)."""

from __future__ import annotations

from typing import Any


def square(x: int) -> int:
    return x * x


def echo(value: Any) -> Any:
    return value
