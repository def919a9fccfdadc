"""Functions the joblib backend's tests run on the nodes (shipped there as a
job's package is: this module is its own top-level package)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from joblib import Parallel, delayed


def square(x: int) -> int:
    return x * x


def where() -> tuple[int, int]:
    """This process and its parent: a node, for a worker (a spare worker
    that ran a job may be gone by the time a test looks)."""
    return os.getpid(), os.getppid()


def pid_of(x: int) -> tuple[int, tuple[int, int]]:
    return x, where()


def nested(n: int) -> tuple[int, tuple[int, int]]:
    """A batch that runs a Parallel of its own (on the cluster, from a worker)."""
    inner = Parallel(n_jobs=2)(delayed(square)(i) for i in range(n))
    return sum(inner), where()


def sleep_or_fail(i: int, folder: str) -> int:
    if i == 0:
        time.sleep(0.5)  # the sleepers start first
        raise ValueError("item 0 fails")
    (Path(folder) / f"{os.getpid()}.pid").write_text(str(i))
    time.sleep(60)
    return i


class PidScorer:
    """Accuracy, and the pid of the process that scored and of its parent,
    in `folder`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, estimator: Any, X: Any, y: Any) -> float:
        pid, parent = where()
        (Path(self.folder) / f"{pid}-{time.monotonic_ns()}").write_text(
            f"{pid} {parent}"
        )
        return float((estimator.predict(X) == y).mean())
