"""CPython's own generic executor tests, run against `lucidity.Executor` on
real daemons (`rt_client`: a control and two nodes).

The `ExecutorTest`, `WaitTests` and `AsCompletedTests` mixins of
`Lib/test/test_concurrent_futures` are the ones every standard executor
passes; they are imported from this interpreter's `test` package (a package
since 3.12's split, one module before), and skipped, saying so, where the
interpreter was installed without it. Their callables (`pow`, `time.sleep`,
the test modules' own `mul`...) go to the workers by reference or pickled.
"""

from __future__ import annotations

import importlib

import pytest

import lucidity


def _load() -> tuple[type, type, type, type, type]:
    try:
        executor = importlib.import_module("test.test_concurrent_futures.executor")
        wait = importlib.import_module("test.test_concurrent_futures.test_wait")
        done = importlib.import_module("test.test_concurrent_futures.test_as_completed")
        util = importlib.import_module("test.test_concurrent_futures.util")
        return (
            util.BaseTestCase,
            util.ExecutorMixin,
            executor.ExecutorTest,
            wait.WaitTests,
            done.AsCompletedTests,
        )
    except ModuleNotFoundError as exc:
        if exc.name != "test.test_concurrent_futures.executor":
            raise
    # Before 3.12 the suite is one module.
    single = importlib.import_module("test.test_concurrent_futures")
    return (
        single.BaseTestCase,
        single.ExecutorMixin,
        single.ExecutorTest,
        single.WaitTests,
        single.AsCompletedTests,
    )


try:
    _base, _mixin, _executor_tests, _wait_tests, _as_completed_tests = _load()
except ImportError as exc:
    pytest.skip(
        f"this interpreter has no CPython test package ({exc}); "
        "the executor suites run where it is installed",
        allow_module_level=True,
    )


class _LucidityMixin(_mixin):  # type: ignore[misc, valid-type]
    executor_type = lucidity.Executor
    worker_count = 5


@pytest.mark.usefixtures("rt_client")
class TestLucidityExecutor(_LucidityMixin, _executor_tests, _base):  # type: ignore[misc, valid-type]
    pass


@pytest.mark.usefixtures("rt_client")
class TestLucidityWait(_LucidityMixin, _wait_tests, _base):  # type: ignore[misc, valid-type]
    pass


@pytest.mark.usefixtures("rt_client")
class TestLucidityAsCompleted(_LucidityMixin, _as_completed_tests, _base):  # type: ignore[misc, valid-type]
    pass
