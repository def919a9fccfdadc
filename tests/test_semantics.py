"""Cluster semantics the chaos tests do not reach, observed with real daemons.

* `async_init_retry_interval_ms`: how long an async submit waits for a node.
* `async_get_retry_interval_ms`: how soon a hung (SIGSTOPped) node running an
  async job is given up by the client, with control deliberately blind to it.
* `async_set_retry_interval_ms`: how often a node re-sends a result to a
  client whose connection dropped, seen through a TCP relay that cuts the
  client off and lets it back.
* Code bundles: a package over `LUCIDITY_MAX_BUNDLE_MB` is refused at the
  caller; bytes that do not match their hash (sent by a client, or found in
  a node's cache) never run.
* A long fanout streams: in-flight jobs stay within the window and the input
  is consumed lazily.

Daemons come from conftest's factories and are ended by pid after each test;
a stopped node is continued in a `finally`; every wait is bounded; only
127.0.0.1 is used. Timing assertions compare against the configured
intervals with wide margins, never tight bounds.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from relay import Relay
from waits import wait_until

import lucidity
from lucidity import _stubs
from lucidity._options import validate_options
from lucidity.bundle import Bundle, BundleTooLargeError, build_bundle
from lucidity.chunks import CHUNK_MAX_ITEMS
from lucidity.cluster.client.core import (
    INIT_ATTEMPTS,
    SILENT_CHECKS,
    Client,
    get_client,
)
from lucidity.cluster.security import default_keys
from lucidity.fanout import FANOUT_WINDOW_PER_SLOT

WAIT_S = 20.0
RTAPP = "lucidity_rtapp.work"
SEMAPP = "semapp"


def ref(target: str, **options: Any) -> _stubs.JobRef[Any]:
    return _stubs.JobRef(target, options)


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.strip() else None


def bare_env() -> dict[str, str]:
    """No PYTHONPATH, no cluster: a node that only has lucidity installed."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "LUCIDITY_CONTROL", "LUCIDITY_NODE", "LUCIDITY_NODE_ID"):
        env.pop(name, None)
    return env


# ---- async_init_retry_interval_ms ---------------------------------------------


def test_async_init_retry_interval_bounds_the_wait_for_a_node(
    rt_daemons: Any, bounded: Any
) -> None:
    control = rt_daemons.control()  # and no node, ever
    lucidity.connect(control.endpoint)
    client = get_client()
    wait_until(lambda: client._synced, 10, "the client's first node list")
    target = f"{RTAPP}:square"
    fast = ref(target, async_init_retry_interval_ms=20)
    slow = ref(target, async_init_retry_interval_ms=200)
    # A blocking call waits by init_retry_interval_ms, whatever its async one.
    blocking = ref(target, async_init_retry_interval_ms=20, init_retry_interval_ms=60)

    failed_at: dict[str, float] = {}
    t0 = time.monotonic()
    jobs = {
        "fast": _stubs.submit_remote(fast, (2,)),
        "slow": _stubs.submit_remote(slow, (2,)),
    }
    for name, job in jobs.items():
        job.add_done_callback(
            lambda _, name=name: failed_at.setdefault(name, time.monotonic() - t0)
        )
    with pytest.raises(lucidity.NoNodesError) as blocking_error:
        bounded(lambda: _stubs.run_remote(blocking, (2,)), WAIT_S)
    failed_at["blocking"] = time.monotonic() - t0
    errors = {}
    for name, job in jobs.items():
        errors[name] = bounded(lambda job=job: job.exception(WAIT_S), WAIT_S)
        assert isinstance(errors[name], lucidity.NoNodesError), errors[name]

    print(f"async_init: failed after {failed_at}")
    # Each names the option that bounded its wait, and the wait.
    assert "200 ms (10 x async_init_retry_interval_ms)" in str(errors["fast"])
    assert "2000 ms (10 x async_init_retry_interval_ms)" in str(errors["slow"])
    assert "600 ms (10 x init_retry_interval_ms)" in str(blocking_error.value)
    assert "lucidity node --control" in str(errors["fast"])  # says what to do

    # Each waited at least about INIT_ATTEMPTS x its interval (what the
    # option promises), and ended: ceilings generous for a loaded machine;
    # the fast one (0.2 s) still ends well before the slow one (2 s).
    fast_s = INIT_ATTEMPTS * 20 / 1000
    slow_s = INIT_ATTEMPTS * 200 / 1000
    blocking_s = INIT_ATTEMPTS * 60 / 1000
    assert 0.8 * fast_s <= failed_at["fast"] < fast_s + 3.0, failed_at
    assert 0.8 * blocking_s <= failed_at["blocking"] < blocking_s + 3.0, failed_at
    assert 0.8 * slow_s <= failed_at["slow"] < slow_s + 5.0, failed_at
    assert failed_at["fast"] < failed_at["slow"], failed_at


# ---- async_get_retry_interval_ms ----------------------------------------------


def _time_to_rerun_after_sigstop(
    rt_daemons: Any,
    procs: Any,
    bounded: Any,
    by_pid: dict[int, Any],
    path: Path,
    interval: int,
) -> float:
    """Run a 2 s async job checked every `interval` ms, SIGSTOP its node
    mid-job, and return how long until the job starts again elsewhere."""
    job = _stubs.submit_remote(
        ref(f"{RTAPP}:announce_then_sleep", async_get_retry_interval_ms=interval),
        (str(path), 2.0),
    )
    first = wait_until(lambda: read_pid(path), WAIT_S, "the job to start")
    stopped = by_pid[procs.stat(first)[1]]
    # Longer than the 25 ms job's silence window (0.5 s) and the client's
    # idle ping period (1 s): a healthy node must not be given up.
    time.sleep(1.0)
    assert read_pid(path) == first, "a healthy node was given up: job re-run"
    assert not job.done(), "the job ended before its node could be stopped"
    rt_daemons.signal(stopped, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        second = wait_until(
            lambda: (pid := read_pid(path)) != first and pid,
            WAIT_S,
            "the job to run again on the other node",
        )
        seen = time.monotonic() - t0
        assert bounded(lambda: job.await_get(WAIT_S), WAIT_S) == 2.0
        assert procs.stat(second)[1] != stopped.pid
        assert procs.stat(second)[1] in by_pid
        return seen
    finally:
        rt_daemons.signal(stopped, signal.SIGCONT)


def test_async_get_retry_interval_sets_how_soon_a_hung_node_is_lost(
    rt_daemons: Any, procs: Any, bounded: Any, tmp_path: Path
) -> None:
    # Control drops a silent node only after 60 s: within this test only the
    # client's own checks (async_get_retry_interval_ms) can see the hang.
    control = rt_daemons.control("--dead-after-ms", "60000")
    nodes = [
        rt_daemons.node(control.endpoint, "--cache", str(tmp_path / f"cache-{i}"))
        for i in range(2)
    ]
    by_pid = {n.pid: n for n in nodes}
    lucidity.connect(control.endpoint)
    get_client().wait_for_nodes(2, timeout=WAIT_S)

    seen_after = {
        interval: _time_to_rerun_after_sigstop(
            rt_daemons, procs, bounded, by_pid, tmp_path / f"pid-{interval}", interval
        )
        for interval in (25, 150)
    }
    print(f"async_get: re-run after SIGSTOP {seen_after}")
    # Lost after SILENT_CHECKS silent intervals: never before, soon after.
    for interval, seen in seen_after.items():
        silent_s = SILENT_CHECKS * interval / 1000
        assert 0.7 * silent_s <= seen < silent_s + 2.0, (interval, seen_after)
    assert seen_after[150] > 2 * seen_after[25], seen_after
    assert all(n.proc.poll() is None for n in nodes)


# ---- async_set_retry_interval_ms ----------------------------------------------


@pytest.fixture
def relay_to(rt_daemons: Any) -> Iterator[Callable[[str], Relay]]:
    relays: list[Relay] = []

    def make(target: str) -> Relay:
        relays.append(Relay(target))
        return relays[-1]

    try:
        yield make
    finally:
        for r in relays:
            r.close()


def test_async_set_retry_interval_paces_redelivery_to_a_reconnecting_client(
    rt_daemons: Any, relay_to: Callable[[str], Relay], bounded: Any, tmp_path: Path
) -> None:
    control = rt_daemons.control()
    node = rt_daemons.node(
        control.endpoint, "--cache", str(tmp_path / "cache"), workers=2
    )
    relay = relay_to(node.endpoint)
    # A real client (this user's keys, as the daemons') whose only way to the
    # node is the relay. Its own checks of the node (async_get) tolerate 20 s
    # of silence, so the cut below does not make it give the node up and run
    # the jobs elsewhere.
    client = Client(None, static_nodes=[relay.endpoint], keys=default_keys())
    try:
        duration = 1.0
        jobs: dict[int, Any] = {}
        paths: dict[int, Path] = {}
        for set_ms in (50, 2500):
            paths[set_ms] = tmp_path / f"pid-{set_ms}"
            options = validate_options(
                {
                    "async_set_retry_interval_ms": set_ms,
                    "async_get_retry_interval_ms": 1000,
                }
            )
            jobs[set_ms] = client.submit(
                f"{RTAPP}:announce_then_sleep", options, (str(paths[set_ms]), duration)
            )
        arrived: dict[int, float] = {}
        for set_ms, job in jobs.items():
            job.add_done_callback(
                lambda _, set_ms=set_ms: arrived.setdefault(set_ms, time.monotonic())
            )
        started = {}
        for set_ms, path in paths.items():
            wait_until(lambda path=path: read_pid(path), WAIT_S, "both jobs to start")
            started[set_ms] = time.monotonic()
        relay.cut()  # the client's link to the node goes down, mid-job
        finished = {k: t + duration for k, t in started.items()}
        # The node now holds both results: its first try to send each failed.
        time.sleep(max(0.0, max(finished.values()) + 0.4 - time.monotonic()))
        assert not any(job.done() for job in jobs.values())
        restored = time.monotonic()
        relay.restore()  # the client reconnects under its identity
        for job in jobs.values():
            assert bounded(lambda job=job: job.result(WAIT_S), WAIT_S) == duration

        quick, slow = arrived[50] - restored, arrived[2500] - restored
        print(
            f"async_set: after restore 50 ms: {quick:.2f} s, 2500 ms: {slow:.2f} s; "
            f"after the job's end {arrived[2500] - finished[2500]:.2f} s"
        )
        # Re-sent every 50 ms: here soon after the client is back (a
        # reconnect, on a loaded machine: a generous ceiling).
        assert quick < 2.0, arrived
        # Re-sent every 2.5 s: not before its next try after the first (the
        # lower bounds are what tells the two intervals apart).
        assert arrived[2500] - finished[2500] >= 0.8 * 2.5, (finished, arrived)
        assert slow >= 1.5 and slow > quick, (restored, arrived)
        assert arrived[2500] - finished[2500] < 2.5 + 3.0, (finished, arrived)
    finally:
        client.close()
    assert node.proc.poll() is None


# ---- code bundles ---------------------------------------------------------------

SEMAPP_JOBS = '''"""The semantics tests' app: shipped to the nodes as a bundle."""


def which():
    return "the code the client named"
'''


def zip_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


# Same package, other code: what a node must never run in the app's name.
IMPOSTOR = zip_of(
    {
        f"{SEMAPP}/__init__.py": "",
        f"{SEMAPP}/jobs.py": "def which():\n    return 'other code'\n",
    }
)


@pytest.fixture(scope="module")
def semapp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    """`semapp` importable here only; yields the bundle a client ships of it."""
    root = tmp_path_factory.mktemp("semapp")
    (root / SEMAPP).mkdir()
    (root / SEMAPP / "__init__.py").write_text("")
    (root / SEMAPP / "jobs.py").write_text(SEMAPP_JOBS)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        bundle = build_bundle(f"{SEMAPP}.jobs")
        assert bundle is not None
        yield bundle
    finally:
        sys.path.remove(str(root))


def bare_node(rt_daemons: Any, control: str, tmp_path: Path, cache: Path) -> Any:
    """A node in an empty folder, no PYTHONPATH: code reaches it by bundle."""
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    return rt_daemons.node(control, "--cache", str(cache), cwd=empty, env=bare_env())


def test_bundle_over_the_limit_is_refused_at_the_caller(
    rt_daemons: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounded: Any
) -> None:
    root = tmp_path / "src"
    (root / "sembig").mkdir(parents=True)
    (root / "sembig" / "__init__.py").write_text("")
    filler = "# " + "x" * 98 + "\n"  # 100 bytes of source a line
    (root / "sembig" / "jobs.py").write_text(
        "def one():\n    return 1\n\n" + filler * 1000  # 100 kB
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("LUCIDITY_MAX_BUNDLE_MB", "0.05")
    control = rt_daemons.control()
    cache = tmp_path / "cache"
    bare_node(rt_daemons, control.endpoint, tmp_path, cache)
    lucidity.connect(control.endpoint)
    get_client().wait_for_nodes(1, timeout=WAIT_S)
    one = ref("sembig.jobs:one")

    t0 = time.monotonic()
    with pytest.raises(BundleTooLargeError) as info:
        _stubs.submit_remote(one, ())
    with pytest.raises(BundleTooLargeError):
        bounded(lambda: _stubs.run_remote(one, ()), WAIT_S)
    with pytest.raises(BundleTooLargeError):
        bounded(lambda: _stubs.fanout(one, [(), ()]), WAIT_S)
    assert time.monotonic() - t0 < 5
    message = str(info.value)
    assert isinstance(info.value, lucidity.ClusterError)
    assert "'sembig'" in message
    assert "0.1 MiB" in message  # its size
    assert "0.05 MiB bundle limit" in message  # the limit, as set
    assert "install the package on every node" in message  # what to do
    assert "LUCIDITY_MAX_BUNDLE_MB" in message
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing shipped

    # The limit was the only obstacle: raised, the same client ships it.
    monkeypatch.setenv("LUCIDITY_MAX_BUNDLE_MB", "1")
    assert bounded(lambda: _stubs.run_remote(one, ()), WAIT_S) == 1
    assert [f.suffix for f in cache.iterdir()] == [".zip"]


def test_node_refuses_bundle_bytes_that_do_not_match_their_hash(
    rt_daemons: Any, semapp: Bundle, tmp_path: Path, bounded: Any
) -> None:
    control = rt_daemons.control()
    cache = tmp_path / "cache"
    node = bare_node(rt_daemons, control.endpoint, tmp_path, cache)
    lucidity.connect(control.endpoint)
    client = get_client()
    (info,) = client.wait_for_nodes(1, timeout=WAIT_S)
    which = ref(f"{SEMAPP}.jobs:which")
    named = client._bundle(which.target)
    assert named == semapp
    # A client that names one bundle and sends other bytes when asked.
    client._by_digest[named.digest] = Bundle(named.package, named.digest, IMPOSTOR)

    with pytest.raises(lucidity.ClusterError) as error:
        bounded(lambda: _stubs.run_remote(which, ()), WAIT_S)
    message = str(error.value)
    assert "does not match its hash" in message
    assert named.digest[:12] in message and info["id"] in message
    assert f"{SEMAPP}.jobs:which" in message
    assert not (cache / f"{named.digest}.zip").exists()  # not cached either
    assert "does not match its hash" in node.log_text()

    # Honest bytes again: the node fetches them and runs the code named.
    client._by_digest[named.digest] = named
    assert bounded(lambda: _stubs.run_remote(which, ()), WAIT_S) == (
        "the code the client named"
    )
    assert (cache / f"{named.digest}.zip").read_bytes() == named.data


def test_a_bundle_its_client_cannot_send_fails_the_job_at_once(
    rt_daemons: Any, semapp: Bundle, tmp_path: Path, bounded: Any
) -> None:
    control = rt_daemons.control()
    bare_node(rt_daemons, control.endpoint, tmp_path, tmp_path / "cache")
    lucidity.connect(control.endpoint)
    client = get_client()
    client.wait_for_nodes(1, timeout=WAIT_S)
    which = ref(f"{SEMAPP}.jobs:which")
    # The client names a bundle it does not hold (none can send it): the node
    # hears so when it asks, and fails the job instead of waiting for it.
    unknown = "0" * 64
    client._bundles[semapp.package] = Bundle(semapp.package, unknown, b"")
    started = time.monotonic()
    with pytest.raises(lucidity.ClusterError, match="not known to the client") as error:
        bounded(lambda: _stubs.run_remote(which, ()), WAIT_S)
    assert time.monotonic() - started < 5.0
    assert unknown[:12] in str(error.value) and f"{SEMAPP}.jobs:which" in str(
        error.value
    )


@pytest.mark.parametrize("damage", ["other code", "truncated"])
def test_node_never_runs_a_cached_bundle_that_does_not_match_its_hash(
    rt_daemons: Any, semapp: Bundle, tmp_path: Path, bounded: Any, damage: str
) -> None:
    # The node's cache already holds a file under the bundle's name, with
    # bytes that are not the bundle (a torn write, a disk error, tampering).
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / f"{semapp.digest}.zip"
    cached.write_bytes(
        IMPOSTOR if damage == "other code" else semapp.data[: len(semapp.data) // 2]
    )
    assert hashlib.sha256(cached.read_bytes()).hexdigest() != semapp.digest
    control = rt_daemons.control()
    node = bare_node(rt_daemons, control.endpoint, tmp_path, cache)
    lucidity.connect(control.endpoint)
    get_client().wait_for_nodes(1, timeout=WAIT_S)

    which = ref(f"{SEMAPP}.jobs:which")
    assert bounded(lambda: _stubs.run_remote(which, ()), WAIT_S) == (
        "the code the client named"
    )
    assert cached.read_bytes() == semapp.data  # fetched again, cache repaired
    assert "does not match its hash" in node.log_text()


# ---- a long fanout streams ------------------------------------------------------


def _rss_peak_kb() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


FANOUT_N = 1_000_000


def test_million_item_fanout_streams_within_the_window(
    rt_app: Any, rt_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million items from a lazy generator: chunks in flight never pass the
    window, items in flight never pass window x CHUNK_MAX_ITEMS, the input is
    pulled as results come back, and memory grows by the results only."""
    from lucidity_rtapp.work_jobs import square_remote_fanout

    client = get_client()
    window = FANOUT_WINDOW_PER_SLOT * sum(int(n["workers"]) for n in client.nodes())
    assert window == FANOUT_WINDOW_PER_SLOT * 2  # two nodes of one worker
    lock = threading.Lock()
    seen = {"consumed": 0, "chunks": 0, "items": 0, "peak_chunks": 0, "peak_items": 0}
    first_result: list[int] = []  # items consumed when the first result came

    def counting_submit(target: str, options: Any, args: Any, **kw: Any) -> Any:
        size = len(args) if kw.get("batch") else 1
        job = real_submit(target, options, args, **kw)
        with lock:
            seen["chunks"] += 1
            seen["items"] += size
            seen["peak_chunks"] = max(seen["peak_chunks"], seen["chunks"])
            seen["peak_items"] = max(seen["peak_items"], seen["items"])

        def on_done(_: Any) -> None:
            with lock:
                seen["chunks"] -= 1
                seen["items"] -= size
                if not first_result:
                    first_result.append(seen["consumed"])

        job.add_done_callback(on_done)
        return job

    def items() -> Iterator[int]:
        for i in range(FANOUT_N):
            seen["consumed"] = i + 1
            yield i

    real_submit = client.submit
    monkeypatch.setattr(client, "submit", counting_submit)
    peak_known = _reset_rss_peak()
    before_kb = _rss_peak_kb()
    t0 = time.monotonic()
    results = square_remote_fanout(items())
    elapsed = time.monotonic() - t0
    after_kb = _rss_peak_kb()

    assert len(results) == FANOUT_N and results[-1] == (FANOUT_N - 1) ** 2
    assert results == [i * i for i in range(FANOUT_N)]
    assert seen["chunks"] == seen["items"] == 0
    assert seen["peak_chunks"] <= window, seen
    assert seen["peak_items"] <= window * CHUNK_MAX_ITEMS < FANOUT_N, seen
    # Consumed as it runs: the first result came back long before the end.
    assert first_result and first_result[0] <= window + 1, first_result
    grown = None
    if peak_known and before_kb is not None and after_kb is not None:
        grown = (after_kb - before_kb) * 1024
        # The results (a list slot and an int: about 40 bytes an item) and
        # little else: a pending job costs about 2 kB, so holding every
        # item's would take twenty times this bound.
        assert grown < 100 * FANOUT_N, (before_kb, after_kb)
    print(
        f"fanout of {FANOUT_N}: {elapsed:.1f} s, in flight at most "
        f"{seen['peak_chunks']} chunks / {seen['peak_items']} items, "
        f"peak RSS grew {grown} bytes"
    )


def test_million_item_fanout_input_is_never_materialised(
    rt_app: Any, rt_client: Any, bounded: Any
) -> None:
    """A fanout over a generator of a million items whose item 500 fails:
    items are pulled only as the window frees up, so it stops after pulling a
    few windows past item 500 (a fanout calling `list()` on its input, in the
    generated stub or the client, would pull all million first)."""
    from lucidity_rtapp.work_jobs import square_remote_fanout

    window = FANOUT_WINDOW_PER_SLOT * 2
    pulled = [0]

    def items() -> Iterator[Any]:
        for i in range(1_000_000):
            pulled[0] = i + 1
            yield "not a number" if i == 500 else i

    with pytest.raises(TypeError):
        bounded(lambda: square_remote_fanout(items()), WAIT_S)
    # Past item 500's chunk, chunks are pulled only as the window frees up,
    # until its failure is seen: at most a window of chunks more.
    assert 500 < pulled[0] <= 500 + (window + 1) * CHUNK_MAX_ITEMS < 1_000_000, pulled


def test_a_link_closed_during_the_handshake_is_not_an_authentication_error(
    rt_daemons: Any, relay_to: Callable[[str], Relay], bounded: Any, tmp_path: Path
) -> None:
    control = rt_daemons.control()
    node = rt_daemons.node(control.endpoint, "--cache", str(tmp_path / "cache"))
    relay = relay_to(node.endpoint)
    client = Client(None, static_nodes=[relay.endpoint], keys=default_keys())
    try:
        path = tmp_path / "pid"
        options = validate_options({"async_get_retry_interval_ms": 1000})
        job = client.submit(f"{RTAPP}:announce_then_sleep", options, (str(path), 0.5))
        wait_until(lambda: read_pid(path), WAIT_S, "the job to start")
        # Something between client and node answers for a node it cannot reach
        # (a proxy, a tunnel, a port forward): the client's reconnects are
        # accepted, then closed before the ZeroMQ handshake.
        relay.cut("close")
        time.sleep(1.0)
        relay.restore()
        assert bounded(lambda: job.result(WAIT_S), WAIT_S) == 0.5
    finally:
        client.close()
