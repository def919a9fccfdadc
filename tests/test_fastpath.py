"""The fast path of blocking calls (`Client.run`), with real daemons.

A `_remote`/`_local` call sends its job and waits for the result on a socket
of the calling thread; only what is not a plain ending goes to the I/O thread.
These tests count what reaches the I/O thread (`Client._place`: every
placement it makes) to see which way each call went.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from waits import wait_until

import lucidity
from lucidity import _stubs
from lucidity._options import validate_options
from lucidity.cluster.client import MAX_SYSTEM_ATTEMPTS, Client, get_client
from lucidity.cluster.wire import protocol as p
from lucidity.errors import ClusterError, RemoteTraceback, WorkerLostError

WAIT_S = 20.0
APP = "lucidity_rtapp.work"


@pytest.fixture
def placed(monkeypatch: pytest.MonkeyPatch) -> Callable[[Client], list[str | None]]:
    """`placed(client)`: the node address of every placement the client's
    I/O thread makes from now on."""

    def spy(client: Client) -> list[str | None]:
        seen: list[str | None] = []
        real = client._place

        def place(pending: Any) -> None:
            real(pending)
            seen.append(pending.addr)  # where it went

        monkeypatch.setattr(client, "_place", place)
        return seen

    return spy


def _links(client: Client) -> int:
    with client._links_lock:
        return len(client._links)


def test_blocking_calls_take_the_fast_path(
    rt_client: Any, placed: Callable[[Client], list[str | None]]
) -> None:
    client = get_client()
    seen = placed(client)
    ref: _stubs.JobRef[int] = _stubs.JobRef(f"{APP}:square")
    assert [_stubs.run_remote(ref, (i,)) for i in range(50)] == [
        i * i for i in range(50)
    ]
    # An application error is a plain ending too, with its own type.
    fail: _stubs.JobRef[None] = _stubs.JobRef(f"{APP}:fail")
    with pytest.raises(Exception, match="boom") as info:
        _stubs.run_remote(fail, ("boom",))
    assert type(info.value).__name__ == "AppError"
    assert isinstance(info.value.__cause__, RemoteTraceback)  # no Job, same error
    assert seen == [], "a blocking call went through the I/O thread"
    link = client._local.link
    assert link.identity.startswith(client._identity + b"/t")
    assert set(link.socks) <= set(rt_client.nodes)
    # `_local`: this process's own node (a private one, started here).
    assert _stubs.run_local(ref, (5,)) == 25
    assert seen == []
    assert client.local_node() in link.socks
    # The async variant still goes through the I/O thread.
    assert _stubs.submit_remote(ref, (3,)).await_get(WAIT_S) == 9
    assert len(seen) == 1


def test_headers_made_once_per_kind_of_job_keep_each_kinds_options(
    rt_client: Any,
) -> None:
    client = get_client()
    small = validate_options({"memory": 100 * 2**20})
    large = validate_options({"memory": 300 * 2**20, "fuel": 7})
    heads = [
        p.decode(client._new_job(f"{APP}:square", o, (1,))[1][0]).header
        for o in (small, large, small, validate_options({}))
    ]
    assert [(h.get("memory"), h.get("fuel")) for h in heads] == [
        (100 * 2**20, None),
        (300 * 2**20, 7),
        (100 * 2**20, None),
        (None, None),
    ]
    assert len({h["id"] for h in heads}) == 4
    assert {h["target"] for h in heads} == {f"{APP}:square"}


def test_options_the_fast_path_leaves_to_the_io_thread(
    rt_client: Any, placed: Callable[[Client], list[str | None]]
) -> None:
    client = get_client()
    seen = placed(client)
    slow: _stubs.JobRef[float] = _stubs.JobRef(f"{APP}:too_slow", {"timeout": 5.0})
    assert _stubs.run_remote(slow, (0.0,)) == 0.0
    assert len(seen) == 1  # `timeout`: its timer is the I/O thread's


def test_worker_death_is_retried_then_worker_lost(
    rt_client: Any, placed: Callable[[Client], list[str | None]]
) -> None:
    client = get_client()
    seen = placed(client)
    die: _stubs.JobRef[None] = _stubs.JobRef(f"{APP}:die")
    t0 = time.monotonic()
    with pytest.raises(WorkerLostError, match=r"exited with 3.*attempt 3 of 3"):
        _stubs.run_remote(die, (3,))
    assert time.monotonic() - t0 < WAIT_S
    # The first run was the fast path's; the I/O thread made the others,
    # counting that first one.
    assert len(seen) == MAX_SYSTEM_ATTEMPTS - 1
    assert client._inflight == {}
    # The node replaced its workers; the next call takes the fast path again.
    square: _stubs.JobRef[int] = _stubs.JobRef(f"{APP}:square")
    assert _stubs.run_remote(square, (7,)) == 49
    assert len(seen) == MAX_SYSTEM_ATTEMPTS - 1


def test_stopped_node_falls_back_and_finishes_on_the_other(
    rt_daemons: Any,
    tmp_path: Path,
    placed: Callable[[Client], list[str | None]],
) -> None:
    # Control keeps listing a stopped node for a minute: what gives it up
    # here is the fast path's own silence check (20 x 50 ms).
    control = rt_daemons.control("--dead-after-ms", "60000")
    nodes = [rt_daemons.node(control.endpoint) for _ in range(2)]
    lucidity.connect(control.endpoint)
    client = get_client()
    client.wait_for_nodes(2, timeout=WAIT_S)
    seen = placed(client)
    ref: _stubs.JobRef[float] = _stubs.JobRef(
        f"{APP}:announce_then_sleep", {"sync_retry_interval_ms": 50}
    )
    flag = tmp_path / "pid"
    out: list[Any] = []

    def call() -> None:
        try:
            out.append(_stubs.run_remote(ref, (str(flag), 0.5)))
        except BaseException as exc:  # noqa: B036 - handed to the test
            out.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    first = int(wait_until(lambda: flag.exists() and flag.read_text(), 15, "start"))
    victim = next(n for n in nodes if first in n.workers())
    survivor = next(n for n in nodes if n is not victim)
    flag.unlink()
    t0 = time.monotonic()
    rt_daemons.signal(victim, signal.SIGSTOP)  # SIGCONT comes in stop_all
    caller.join(WAIT_S)
    assert out == [0.5]
    # 1 s of silence, then the rerun's 0.5 s.
    assert time.monotonic() - t0 < 8
    assert int(flag.read_text()) in survivor.workers()
    assert seen == [survivor.endpoint]
    assert victim.endpoint not in {n["addr"] for n in client.nodes()}


def test_many_threads_at_once(
    rt_client: Any, placed: Callable[[Client], list[str | None]]
) -> None:
    client = get_client()
    seen = placed(client)
    ref: _stubs.JobRef[int] = _stubs.JobRef(f"{APP}:square")
    threads, per_thread = 12, 40
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            barrier.wait(WAIT_S)
            results[t] = [
                _stubs.run_remote(ref, (t * 1000 + i,)) for i in range(per_thread)
            ]
        except BaseException as exc:  # noqa: B036 - handed to the test
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(WAIT_S * 2)
    assert errors == []
    for t in range(threads):
        assert results[t] == [(t * 1000 + i) ** 2 for i in range(per_thread)]
    assert seen == []
    # Each thread had its own sockets; they went with their threads.
    gc.collect()
    wait_until(lambda: _links(client) == 0, 5, "the threads' sockets to close")


def _in_a_call(client: Client) -> bool:
    """Whether a thread is inside a fast-path call (holds its link)."""
    with client._links_lock:
        links = list(client._links)
    for link in links:
        if not link.lock.acquire(blocking=False):
            return True
        link.lock.release()
    return False


def test_close_during_a_blocking_call(rt_client: Any) -> None:
    """`close` ends a call waiting on its own socket, and `ctx.term()` does
    not hang on that socket."""
    client = get_client()
    ref: _stubs.JobRef[float] = _stubs.JobRef(f"{APP}:sleep")
    square: _stubs.JobRef[int] = _stubs.JobRef(f"{APP}:square")
    out: list[Any] = []

    def call() -> None:
        try:
            # A socket to each node first: all of them must be closed.
            for node in rt_client.nodes:
                assert client.run(square.target, square.options, (2,), addr=node) == 4
            assert len(client._local.link.socks) == 2
            long_call.set()
            out.append(_stubs.run_remote(ref, (10.0,)))
        except BaseException as exc:  # noqa: B036 - handed to the test
            out.append(exc)

    long_call = threading.Event()
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    # Not while it is still in one of the short calls: then in the long one.
    assert long_call.wait(10), out
    wait_until(lambda: _in_a_call(client), 5, "the call to wait")
    t0 = time.monotonic()
    client.close()
    assert time.monotonic() - t0 < 3
    assert not client._thread.is_alive()
    caller.join(5)
    assert len(out) == 1 and isinstance(out[0], ClusterError), out
    assert "shut down" in str(out[0])
    assert os.getpid() == client._pid
