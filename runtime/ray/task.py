"""What a Ray worker runs for the Ray engine: one job, or one batch of a fanout.

Ray imports this module by name in its workers (lucidity is installed
there; the app's own package arrives through the task's `runtime_env`). A
job runs as it does in a lucidity worker: imported by reference
(`worker.resolve`), its `memory` and `fuel` armed by `limits.Limits` before
it starts (such jobs get a single-use Ray worker, so a limit hit never
leaves a damaged process behind), and its exception caught here and sent
back as lucidity's error payload (`protocol.dumps_error`), so the caller
re-raises the job's own type with the remote traceback instead of Ray's
`RayTaskError`. The first task in a worker also makes that process a client
of the Ray engine (`LUCIDITY_ENGINE=ray`): nested jobs go through Ray, and
every wait of user code on them goes through `ray.wait` (the handle's wait
hook), which lends this worker's CPU to other tasks meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from lucidity.cluster.node.limits import NO_LIMITS, Limits
from lucidity.cluster.node.worker import _failure, resolve
from lucidity.engine import Target
from lucidity.handle import set_wait_hook, waited_s

__all__ = ["run_batch", "run_job"]

_node_id: str | None = None


def _enter() -> str:
    """This worker's Ray node id; on the first task, set the process up."""
    global _node_id
    if _node_id is None:
        import ray

        _node_id = str(ray.get_runtime_context().get_node_id())
        os.environ["LUCIDITY_ENGINE"] = "ray"
        # Where a job ran, as on lucidity's nodes (errors and apps read it).
        os.environ["LUCIDITY_NODE_ID"] = _node_id
        set_wait_hook(_wait_any)
    return _node_id


def _wait_any(futures: Sequence[Future[Any]], timeout: float | None) -> None:
    from lucidity.ray import get_engine

    get_engine().wait_any(futures, timeout)


def _limits(target: Target, memory: int | None, fuel: int | None) -> Limits:
    if memory is None and fuel is None:
        return NO_LIMITS
    name = target if isinstance(target, str) else getattr(target, "__qualname__", "?")
    return Limits(name, memory, fuel)


def _resolve(target: Target) -> Callable[..., Any]:
    # A reference (generated code) or a pickled callable (the Executor).
    return resolve(target) if isinstance(target, str) else target


# A task's arguments travel as one tuple: Ray serializes each argument of a
# task on its own, and five cost a nested parent's submissions ~0.2 ms each
# over one (measured in a Ray worker, same run).
KwArgs = Mapping[str, Any] | None
JobSpec = tuple[Target, tuple[Any, ...], KwArgs, int | None, int | None]
BatchSpec = tuple[Target, list[Any], bool, KwArgs, int | None, int | None]


def run_job(spec: JobSpec) -> tuple[bool, Any, str]:
    """`spec` is (target, args, kwargs, memory, fuel); the outcome is (True,
    value, node) or (False, error frame, node)."""
    target, args, kwargs, memory, fuel = spec
    node = _enter()
    limits = _limits(target, memory, fuel)
    try:
        func = _resolve(target)
        if limits is NO_LIMITS:
            return True, func(*args, **(kwargs or {})), node
        with limits:
            value = func(*args, **(kwargs or {}))
        if limits.hit is not None:  # the job swallowed the limit's exception
            raise limits.hit
        return True, value, node
    except BaseException as exc:  # noqa: B036 - even SystemExit is the job's result
        frames, _ = _failure(exc, limits)
        return False, frames[0], node


def run_batch(
    spec: BatchSpec,
) -> tuple[list[Any], tuple[int, bytes] | None, float, str, float]:
    """A fanout chunk, `spec` = (target, items, single, kwargs, memory,
    fuel), item after item, stopping at the first failure: (values, (index,
    error frame) or None, seconds, node, seconds waited on nested jobs), as
    on lucidity's workers; fuel is a budget per item."""
    target, items, single, kwargs, memory, fuel = spec
    node = _enter()
    limits = _limits(target, memory, fuel)
    values: list[Any] = []
    fail: tuple[int, bytes] | None = None
    extra = kwargs or {}
    started, waited = time.perf_counter(), waited_s()
    try:
        func = _resolve(target)
    except BaseException as exc:  # noqa: B036 - the first item's result
        frames, _ = _failure(exc, limits)
        return values, (0, frames[0]), 0.0, node, 0.0
    with limits:
        for index, args in enumerate(items):
            try:
                limits.rearm()
                values.append(func(args, **extra) if single else func(*args, **extra))
                if limits.hit is not None:
                    raise limits.hit
            except BaseException as exc:  # noqa: B036 - the item's result
                frames, _ = _failure(exc, limits)
                fail = (index, frames[0])
                break
    return values, fail, time.perf_counter() - started, node, waited_s() - waited
