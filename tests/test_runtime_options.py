"""`@job` options observed on a real cluster: timeout, retries, memory, fuel.

Each failing job fails with its own error type, and the node, its other jobs
and the caller's other jobs carry on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import lucidity
from lucidity.errors import FuelExhaustedError, MemoryLimitError

WAIT_S = 20.0


def _still_serving(app: Any, rt_client: Any) -> None:
    rows = app.where_remote_fanout(range(4))
    assert {r[3] for r in rows} == set(rt_client.node_ids.values())


def test_timeout_fails_with_job_timeout_error(app: Any, rt_client: Any) -> None:
    # The timeout (1 s) counts from placement, queueing included: run the job
    # that keeps within it while the cluster is idle.
    assert app.too_slow_remote(0.01) == 0.01
    other = app.echo_after_remote_async(1, 0.5)
    job = app.too_slow_remote_async(30.0)
    with pytest.raises(lucidity.JobTimeoutError, match="timeout"):
        job.await_get(timeout=WAIT_S)
    assert other.await_get(timeout=WAIT_S) == 1
    _still_serving(app, rt_client)


def test_retries_run_an_app_error_again(app: Any, work: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert app.flaky_remote(str(first), 2) == 3  # two failures, then success
    with pytest.raises(work.AppError, match="run 3 failed"):
        app.flaky_remote(str(second), 5)  # 1 run + 2 retries, all failing
    assert len(list(second.iterdir())) == 3


def test_memory_limit_fails_with_its_own_error(app: Any, rt_client: Any) -> None:
    assert app.hog_remote(8) == 8
    with pytest.raises(MemoryLimitError):
        app.hog_remote(256)
    assert app.hog_remote(8) == 8
    _still_serving(app, rt_client)


def test_fuel_fails_with_its_own_error(app: Any, rt_client: Any) -> None:
    assert app.spin_remote(0.01) > 0
    with pytest.raises(FuelExhaustedError):
        app.spin_remote(5.0)
    _still_serving(app, rt_client)
