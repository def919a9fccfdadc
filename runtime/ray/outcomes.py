"""What a Ray-side failure of a job is to lucidity's callers.

A job's own failure arrives as a value (lucidity's error payload, decoded by
`decode_error`); what Ray raises instead (a lost worker or node, a cancel, a
runtime_env that would not set up) is mapped here to lucidity's errors.
"""

from __future__ import annotations

from ray import exceptions as rex

from lucidity.cluster.client.placement import MAX_SYSTEM_ATTEMPTS
from lucidity.errors import ClusterError, JobCancelledError, WorkerLostError

__all__ = ["ray_error"]

# Ray errors that mean the run was lost, not failed by the job.
_LOST = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.LocalRayletDiedError,
    rex.OutOfMemoryError,
    rex.ObjectLostError,
)


def ray_error(name: str, exc: BaseException) -> BaseException:
    """What a Ray-side failure of job `name` is to lucidity's callers."""
    if isinstance(exc, rex.TaskCancelledError):
        return JobCancelledError(f"job {name} was cancelled")
    if isinstance(exc, _LOST):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return WorkerLostError(
            f"job {name} failed: its Ray worker or node was lost ({type(exc).__name__}"
            f": {first}) (attempt {MAX_SYSTEM_ATTEMPTS} of {MAX_SYSTEM_ATTEMPTS})"
        )
    if isinstance(exc, rex.RuntimeEnvSetupError):
        return ClusterError(f"Ray could not set up the code of job {name}: {exc}")
    if isinstance(exc, rex.RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause  # e.g. the result did not pickle: the job's own error
    return ClusterError(f"Ray failed job {name}: {type(exc).__name__}: {exc}")
