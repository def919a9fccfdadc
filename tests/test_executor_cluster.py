"""`lucidity.Executor` on real daemons: what goes by reference, what is
pickled, and that a callable of a package the nodes lack is shipped to them."""

from __future__ import annotations

import functools
import os
import pickle
from typing import Any

import executor_work
import pytest

from lucidity import Executor
from lucidity.cluster.client import encode_callable


def test_module_level_callables_go_by_reference() -> None:
    assert encode_callable(pow, (2, 3)) == ("builtins:pow", (2, 3))
    assert encode_callable(executor_work.scaled, (1,)) == (
        "executor_work:scaled",
        (1,),
    )
    adder = executor_work.Adder(1)
    target, (fn, args) = encode_callable(adder.add, (2,))
    assert target == "<pickled>:executor_work:Adder.add"
    assert fn == adder.add and args == (2,)


def test_a_shipped_function_runs_in_a_worker(rt_client: Any) -> None:
    with Executor(max_workers=2) as ex:
        value, (pid, parent) = ex.submit(executor_work.scaled, 21, factor=2).result(30)
        assert value == 42
        assert ex.submit(executor_work.Adder(40).add, 2).result(30) == 42
        part = functools.partial(executor_work.scaled, factor=3)
        assert [v for v, _ in ex.map(part, range(5), chunksize=2)] == [0, 3, 6, 9, 12]
    # A worker of one of the nodes (one started for the shipped package).
    assert pid != os.getpid() and parent in rt_client.node_pids


def test_an_unpicklable_callable_fails_its_future(rt_client: Any) -> None:
    with Executor() as ex:
        job = ex.submit(lambda: 1)
        with pytest.raises((pickle.PicklingError, AttributeError)):
            job.result(30)
