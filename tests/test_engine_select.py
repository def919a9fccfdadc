"""Which engine a process uses (`lucidity.engine`): the name's checks, and a
second engine plugged in as one module (the thread-pool test engine), that
the generated stubs and the fanout driver then run on, no daemons."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engines.thread_engine import ThreadEngine

import lucidity
from lucidity import _stubs, engine


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(engine.ENGINES, "threads", "engines.thread_engine")
    saved = engine.connection()
    try:
        lucidity.connect(engine="threads")
        yield
    finally:
        engine.restore_connection(saved)


def test_an_unknown_engine_name_says_which_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(engine.ENGINE_ENV, "sideways")
    with pytest.raises(ValueError, match=r"LUCIDITY_ENGINE='sideways'.*'zmq'"):
        engine.engine_name()
    with pytest.raises(ValueError, match=r"engine='sideways'.*allowed.*'zmq'"):
        lucidity.connect("tcp://127.0.0.1:1", engine="sideways")


def test_zmq_needs_an_address() -> None:
    saved = engine.connection()
    try:
        with pytest.raises(ValueError, match="control daemon's address"):
            lucidity.connect()
    finally:
        engine.restore_connection(saved)


def test_a_second_engine_is_one_module_the_stubs_run_on(threads: None) -> None:
    assert isinstance(engine.get_engine(), ThreadEngine)
    add: _stubs.JobRef[int] = _stubs.JobRef("operator:add")
    assert _stubs.run_remote(add, (2, 3)) == 5
    assert _stubs.submit_remote(add, (4, 5)).result(10) == 9
    assert _stubs.fanout(add, [(i, i) for i in range(500)]) == [
        2 * i for i in range(500)
    ]
    neg: _stubs.JobRef[int] = _stubs.JobRef("operator:neg")
    assert _stubs.fanout_each(neg, range(5)) == [0, -1, -2, -3, -4]
    assert sum(engine.get_engine().batches) == 505  # type: ignore[attr-defined]
