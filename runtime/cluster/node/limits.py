"""A job's limits inside its worker: `memory` and `fuel`, enforced by the kernel.

It owns arming them around one job (or each item of a batch), the errors a
hit limit becomes (MemoryLimitError, FuelExhaustedError), and the fuel unit.
It may not talk to the node: the worker (`worker.py`) reports the job's
outcome, and retires after a limit was hit.
"""

from __future__ import annotations

import resource
import signal

from lucidity.errors import FuelExhaustedError, MemoryLimitError

__all__ = ["FUEL_UNIT_S", "NO_LIMITS", "Limits"]

# One unit of `fuel` is 100 ms of CPU time.
FUEL_UNIT_S = 0.1


def _proc_status_kb(*fields: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in fields:
                out[name] = int(value.split()[0])
    return out


class Limits:
    """A job's `memory` and `fuel`, enforced by the kernel, not by polling.

    fuel: an ITIMER_PROF timer fires SIGPROF when the process has used that
    much CPU time; the handler raises in the job's thread.
    memory: RLIMIT_DATA caps the growth of private memory so that the process's
    anonymous resident memory cannot pass the limit; malloc fails, Python raises
    MemoryError. Address space the process had already reserved (libraries,
    thread stacks) is not counted against the job.
    """

    def __init__(self, target: str, memory: int | None, fuel: int | None) -> None:
        self.target = target
        self.memory = memory
        self.fuel = fuel
        self.hit: BaseException | None = None

    def __enter__(self) -> Limits:
        if self.fuel is not None:
            signal.signal(signal.SIGPROF, self._out_of_fuel)
            signal.setitimer(signal.ITIMER_PROF, self.fuel * FUEL_UNIT_S)
        if self.memory is not None:
            kb = _proc_status_kb("VmData", "RssAnon")
            allowed = kb["VmData"] * 1024 + self.memory - kb["RssAnon"] * 1024
            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            resource.setrlimit(resource.RLIMIT_DATA, (allowed, hard))
        return self

    def rearm(self) -> None:
        """Give the next item of a batch its own full fuel budget."""
        if self.fuel is not None:
            self.hit = None
            signal.setitimer(signal.ITIMER_PROF, self.fuel * FUEL_UNIT_S)

    def __exit__(self, *exc: object) -> None:
        if self.fuel is not None:
            signal.setitimer(signal.ITIMER_PROF, 0)
        if self.memory is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))

    def _out_of_fuel(self, signum: int, frame: object) -> None:
        assert self.fuel is not None
        self.hit = FuelExhaustedError(
            f"job {self.target} used up its fuel of {self.fuel} "
            f"({self.fuel * FUEL_UNIT_S:.1f} s of CPU time)"
        )
        raise self.hit

    def translate(self, exc: BaseException) -> BaseException | None:
        """The limit error `exc` stands for, if it came from a limit."""
        if self.hit is not None:
            return self.hit
        if self.memory is not None and isinstance(exc, MemoryError):
            return MemoryLimitError(
                f"job {self.target} went past its memory limit of {self.memory} "
                f"bytes ({self.memory / 2**20:.0f} MiB)"
            )
        return None


# A job without `memory` or `fuel`: nothing to arm, and nothing to translate.
NO_LIMITS = Limits("", None, None)
