"""The `@job` options: their names, defaults, allowed values and validation.

One table serves both the decorator (validated at import) and `lucidity-gen`
(validated at generation time), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["OPTION_NAMES", "JobOptions", "OptionError", "validate_options"]


class OptionError(ValueError):
    """An unknown `@job` option, or a value it does not allow."""


_INTERVALS = (
    "init_retry_interval_ms",
    "sync_retry_interval_ms",
    "async_init_retry_interval_ms",
    "async_get_retry_interval_ms",
    "async_set_retry_interval_ms",
    "shutdown_retry_interval_ms",
)

FANOUT_SCHEMES = ("roundrobin", "random")

# The smallest `memory` ceiling a bare worker process can live under: an idle
# worker (interpreter + pyzmq) resides in about 25 MB.
MIN_MEMORY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class JobOptions:
    """Validated options of one job; the defaults are lucidity's, see README."""

    init_retry_interval_ms: int = 100
    sync_retry_interval_ms: int = 100
    async_init_retry_interval_ms: int = 100
    async_get_retry_interval_ms: int = 100
    async_set_retry_interval_ms: int = 100
    shutdown_retry_interval_ms: int = 100
    memory: int | None = None
    fuel: int | None = None
    fanout: str = "roundrobin"
    timeout: float | None = None
    retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Only the options that differ from the defaults, in a stable order."""
        out: dict[str, Any] = {}
        for name in OPTION_NAMES:
            value = getattr(self, name)
            if value != getattr(_DEFAULTS, name):
                out[name] = value
        return out


_DEFAULTS = JobOptions()

OPTION_NAMES: tuple[str, ...] = (
    *_INTERVALS,
    "memory",
    "fuel",
    "fanout",
    "timeout",
    "retries",
)


def _allowed(name: str) -> str:
    if name in _INTERVALS:
        return "a positive int (milliseconds)"
    if name == "memory":
        return f"an int of bytes, at least {MIN_MEMORY_BYTES} (32 MiB), or None"
    if name == "fuel":
        return "a positive int (1 unit = 100 ms of CPU time), or None"
    if name == "fanout":
        return " or ".join(repr(s) for s in FANOUT_SCHEMES)
    if name == "timeout":
        return "a positive number of seconds, or None"
    if name == "retries":
        return "an int >= 0 (times an application exception is retried)"
    raise AssertionError(name)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(name: str, value: object) -> bool:
    if name in _INTERVALS:
        return _is_int(value) and value > 0  # type: ignore[operator]
    if name == "memory":
        return value is None or (_is_int(value) and value >= MIN_MEMORY_BYTES)  # type: ignore[operator]
    if name == "fuel":
        return value is None or (_is_int(value) and value > 0)  # type: ignore[operator]
    if name == "fanout":
        return value in FANOUT_SCHEMES
    if name == "timeout":
        return value is None or (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value > 0
        )
    if name == "retries":
        return _is_int(value) and value >= 0  # type: ignore[operator]
    raise AssertionError(name)


def validate_options(options: Mapping[str, object]) -> JobOptions:
    """Check every option; the error names the option and what it allows."""
    for name, value in options.items():
        if name not in OPTION_NAMES:
            raise OptionError(
                f"unknown @job option {name!r}; allowed options: "
                + ", ".join(OPTION_NAMES)
            )
        if not _check(name, value):
            raise OptionError(
                f"@job option {name}={value!r} is not allowed; "
                f"{name} must be {_allowed(name)}"
            )
    return JobOptions(**options)  # type: ignore[arg-type]
