"""The joblib backend on real daemons (`rt_client`: a control, two nodes).

joblib's `Parallel` and scikit-learn's `GridSearchCV` give what they give
sequentially, and the work ran in the nodes' worker processes; a nested
Parallel does not deadlock one-worker nodes; a failure cancels the rest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

joblib = pytest.importorskip(
    "joblib", reason="joblib is a test tool: pip install .[test]"
)
import joblib_work  # noqa: E402
from conftest import wait_gone  # noqa: E402

import lucidity.joblib  # noqa: E402, F401 - registers "lucidity"
from lucidity.joblib import LucidityBackend  # noqa: E402


def _in_workers(places: Any, cluster: Any) -> bool:
    """Every (pid, parent pid) is a worker of one of `cluster`'s nodes."""
    places = set(places)
    return all(pid != os.getpid() for pid, _ in places) and {
        parent for _, parent in places
    } <= set(cluster.node_pids)


def test_parallel_results_equal_sequential_and_ran_in_workers(rt_client: Any) -> None:
    from joblib import Parallel, delayed

    expected = [joblib_work.square(i) for i in range(200)]
    with joblib.parallel_backend("lucidity"):
        assert (
            Parallel(n_jobs=-1)(delayed(joblib_work.square)(i) for i in range(200))
            == expected
        )
        pids = Parallel(n_jobs=-1)(delayed(joblib_work.pid_of)(i) for i in range(20))
    assert [x for x, _ in pids] == list(range(20))
    ran = {place for _, place in pids}
    assert _in_workers(ran, rt_client), (ran, rt_client.node_pids)


def test_n_jobs_minus_one_is_every_slot(rt_client: Any) -> None:
    assert LucidityBackend().effective_n_jobs(-1) == 2  # two nodes, one worker each
    assert LucidityBackend().effective_n_jobs(-2) == 1
    with pytest.raises(ValueError, match="n_jobs == 0"):
        LucidityBackend().effective_n_jobs(0)


class _Counting:
    """This process's engine, counting the jobs submitted through it."""

    def __init__(self) -> None:
        from lucidity.engine import get_engine

        self.engine = get_engine()
        self.jobs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1
        return self.engine.submit(*args, **kwargs)


def test_auto_batching_groups_quick_calls(rt_client: Any) -> None:
    from joblib import Parallel, delayed

    counting = _Counting()
    with joblib.parallel_backend(LucidityBackend(engine=counting)):  # type: ignore[arg-type]
        out = Parallel(n_jobs=2, batch_size="auto")(
            delayed(joblib_work.square)(i) for i in range(2000)
        )
    assert out == [i * i for i in range(2000)]
    # Quick calls: joblib grew the batches, far fewer jobs than calls.
    assert 0 < counting.jobs < 2000 / 4, counting.jobs


def test_nested_parallel_does_not_deadlock(rt_client: Any) -> None:
    from joblib import Parallel, delayed

    with joblib.parallel_backend("lucidity"):
        # Two outer batches fill both one-worker nodes; their inner calls run
        # in the slots they lend while they wait.
        out = Parallel(n_jobs=2, batch_size=1, timeout=60)(
            delayed(joblib_work.nested)(n) for n in (5, 6)
        )
    assert [total for total, _ in out] == [30, 55]
    assert _in_workers((place for _, place in out), rt_client)


def test_a_failure_aborts_the_running_batches(rt_client: Any, tmp_path: Path) -> None:
    from joblib import Parallel, delayed

    started = time.monotonic()
    with joblib.parallel_backend("lucidity"):
        with pytest.raises(ValueError, match="item 0 fails"):
            Parallel(n_jobs=2, batch_size=1)(
                delayed(joblib_work.sleep_or_fail)(i, str(tmp_path)) for i in range(4)
            )
    assert time.monotonic() - started < 30
    # The sleeper that was running was stopped where it ran: its worker ended.
    sleepers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert sleepers, "no sleeper started"
    assert not wait_gone(sleepers, 15), f"sleeping workers still run: {sleepers}"


def test_grid_search_on_iris_equals_sequential(rt_client: Any, tmp_path: Path) -> None:
    pytest.importorskip(
        "sklearn", reason="scikit-learn is a test tool: pip install .[test]"
    )
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    grid = {"max_depth": [1, 2, 3, None], "min_samples_leaf": [1, 5]}

    def search(n_jobs: int | None, folder: Path) -> Any:
        folder.mkdir()
        return GridSearchCV(
            DecisionTreeClassifier(random_state=0),
            grid,
            cv=3,
            n_jobs=n_jobs,
            scoring=joblib_work.PidScorer(str(folder)),
        ).fit(X, y)

    sequential = search(None, tmp_path / "seq")
    with joblib.parallel_backend("lucidity"):
        spread = search(-1, tmp_path / "spread")
    assert spread.best_params_ == sequential.best_params_
    assert list(spread.cv_results_["mean_test_score"]) == list(
        sequential.cv_results_["mean_test_score"]
    )
    scored = {
        tuple(map(int, p.read_text().split())) for p in (tmp_path / "spread").iterdir()
    }
    assert _in_workers(scored, rt_client), (scored, rt_client.node_pids)
    assert len(list((tmp_path / "spread").iterdir())) == 8 * 3
