"""Jobs the runtime's integration tests run on a real cluster.

`lucidity-gen` writes `work_jobs.py` next to a copy of this file; jobs that
start child jobs import that sibling inside their body.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from lucidity import job


class AppError(Exception):
    """A pickleable exception of the app's own: must come back with its type."""


class UnpicklableError(Exception):
    """Cannot be pickled (holds a lock): must come back as `RemoteError`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def _where() -> tuple[int, int, str | None]:
    return os.getpid(), os.getppid(), os.environ.get("LUCIDITY_NODE_ID")


@job
def square(a: int) -> int:
    return a * a


@job(fanout="random")
def pythagorean(a: int, b: int) -> float:
    from lucidity_rtapp.work_jobs import square_remote_async

    sa, sb = square_remote_async(a), square_remote_async(b)
    return float((sa.await_get() + sb.await_get()) ** 0.5)


@job
def sum_of_squares(n: int) -> int:
    """Level 2: a fanout inside a job."""
    from lucidity_rtapp.work_jobs import square_remote_fanout

    return sum(square_remote_fanout(range(n)))


@job
def nested_sum(n: int) -> tuple[int, int]:
    """Level 1: a job that waits on a job that fans out."""
    from lucidity_rtapp.work_jobs import sum_of_squares_remote

    return n, sum_of_squares_remote(n)


@job
def first(pair: tuple[int, int]) -> int:
    """One parameter that is itself a tuple: a fanout passes it whole."""
    return pair[0]


@job
def fail(message: str) -> None:
    raise AppError(message)


@job
def fail_unpicklable(message: str) -> None:
    raise UnpicklableError(message)


@job
def where(tag: int = 0) -> tuple[int, int, int, str | None]:
    """(tag, pid, parent pid, node id) of the process running the job."""
    return (tag, *_where())


@job(fanout="random")
def where_random(tag: int) -> tuple[int, int, int, str | None]:
    return (tag, *_where())


@job
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@job
def tracked_after(n: int) -> int:
    """On Ray: wait on `n` nested jobs in turn, then count the futures the
    worker's engine still tracks (none: each job's entry goes with it)."""
    import gc

    from lucidity.ray import get_engine
    from lucidity_rtapp.work_jobs import square_remote_async

    for i in range(n):
        assert square_remote_async(i).await_get() == i * i
    gc.collect()
    return len(get_engine()._waits._refs)


@job
def wait_on_sleep(seconds: float) -> float:
    """A nested parent that only waits: its child sleeps."""
    from lucidity_rtapp.work_jobs import sleep_remote_async

    return sleep_remote_async(seconds).await_get()


@job
def echo_after(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


@job
def mark(folder: str, index: int, fail_index: int, seconds: float) -> int:
    """Fail at once for `fail_index`; otherwise sleep, then leave a marker file."""
    if index == fail_index:
        raise AppError(f"item {index} failed")
    time.sleep(seconds)
    (Path(folder) / f"done-{index}").write_text(str(os.getpid()))
    return index


@job
def die(code: int) -> None:
    os._exit(code)


@job
def announce_then_sleep(path: str, seconds: float) -> float:
    """Write this worker's pid to `path`, then sleep."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return seconds


@job(timeout=1.0)
def too_slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@job(retries=2)
def flaky(folder: str, failures: int) -> int:
    """Fail the first `failures` runs (counted in files), then return the run."""
    runs = len(list(Path(folder).iterdir())) + 1
    (Path(folder) / f"run-{runs}").write_text(str(os.getpid()))
    if runs <= failures:
        raise AppError(f"run {runs} failed")
    return runs


@job(memory=64 * 1024 * 1024)
def hog(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    return len(block) // (1024 * 1024)


@job(fuel=2)
def spin(seconds: float) -> int:
    """Burn CPU for `seconds` (fuel 2 = 200 ms of CPU time)."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


@job
def odd_one_out(x: int) -> int:
    """Square `x`, except that 3000 and 4000 fail (fanout errors inside chunks)."""
    if x in (3000, 4000):
        raise AppError(f"item {x} is the odd one out")
    return x * x


@job
def parent_of_sleep(seconds: float) -> float:
    """Block on one child job that sleeps `seconds`."""
    from lucidity_rtapp.work_jobs import sleep_remote

    return sleep_remote(seconds)


@job
def cpus() -> list[int]:
    """The CPUs this worker may run on."""
    return sorted(os.sched_getaffinity(0))


@job
def exit_with(kind: str) -> None:
    """Raise what is not an Exception: SystemExit ("exit") or KeyboardInterrupt."""
    import sys

    if kind == "exit":
        sys.exit(0)
    raise KeyboardInterrupt


@job
def blob(folder: str, nbytes: int) -> bytes:
    """Leave a marker per run in `folder`, then return `nbytes` bytes (in-band)."""
    runs = len(list(Path(folder).iterdir())) + 1
    (Path(folder) / f"run-{runs}").write_text(str(os.getpid()))
    return bytes(nbytes)


@job
def nbytes(data: memoryview | bytes) -> int:
    """The size of a buffer (bytes, or one that came out of band)."""
    return memoryview(data).nbytes


@job(timeout=3600)
def nbytes_timed(data: bytes) -> int:
    return len(data)


@job
def die_once(folder: str) -> str | None:
    """The first run's worker dies (a marker in `folder` says so); a later run
    returns its node's id."""
    marker = Path(folder) / "died"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(3)
    return os.environ.get("LUCIDITY_NODE_ID")
