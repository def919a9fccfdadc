"""The runtime's acceptance tests on the Ray engine (`LUCIDITY_ENGINE=ray`).

Every test of the `engine` fixture runs twice: against a Ray head that the
fixture starts with `ray start --head --node-ip-address 127.0.0.1` in an
empty folder (one CPU: nesting must lend it) and stops by pid, and against
a local Ray that the engine starts itself (what `ray.init()` does). The same
generated module (`work_jobs`) runs unchanged. Ray stays on 127.0.0.1:
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` and `RAY_AUTH_MODE=token` on both
sides (with one token, `RAY_AUTH_TOKEN`), and a test checks every TCP
connection of Ray's processes with `ss`.

Runs in tox's `ray` environment; skipped, saying so, where Ray is missing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import waits

WAIT_S = 60.0
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "token",
    # The token both sides share, given as Ray reads it: `ray start` never
    # makes one (only `ray.init()` does, into ~/.ray, which a test must not
    # leave behind).
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
    "RAY_USAGE_STATS_ENABLED": "0",
}

if importlib.util.find_spec("ray") is None:
    pytest.skip(
        "Ray is not installed: the Ray engine's tests run in `tox -e ray` "
        '(pip install "lucidity[ray]")',
        allow_module_level=True,
    )
# Ray reads these when it is imported (its C++ config included): set before.
_SAVED_ENV = {k: os.environ.get(k) for k in [*RAY_ENV, "RAY_TMPDIR", "RAY_ADDRESS"]}
os.environ.update(RAY_ENV)
import ray  # noqa: E402

import lucidity  # noqa: E402
from lucidity import _stubs  # noqa: E402
from lucidity.errors import RemoteTraceback, WorkerLostError  # noqa: E402

pytestmark = pytest.mark.ray

RAY_BIN = str(Path(sys.executable).with_name("ray"))


def teardown_module() -> None:
    for k, v in _SAVED_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Head:
    """A `ray start --head --block` process and what it runs under."""

    def __init__(self, root: Path, procs: Any) -> None:
        self.root = root
        self.procs = procs
        self.empty = root / "empty"
        self.empty.mkdir()
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = root / "head.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "RAY_ADDRESS", "LUCIDITY_ENGINE")
        }
        env.update(RAY_ENV, RAY_TMPDIR=str(root / "head"))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    RAY_BIN,
                    *("start", "--head", "--block", "--disable-usage-stats"),
                    *("--node-ip-address", "127.0.0.1", "--port", str(self.port)),
                    *("--num-cpus", "1", "--include-dashboard", "false"),
                ],
                cwd=self.empty,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own group: `ray start` ends its group when it stops.
                start_new_session=True,
            )
        self.seen: set[int] = set()

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"ray start exited: {self.log.read_text()}")
            return "Ray runtime started" in self.log.read_text(errors="replace")

        waits.wait_until(ready, WAIT_S, f"the Ray head (log {self.log})")

    def pids(self) -> list[int]:
        pids = self.procs.descendants(self.proc.pid)
        self.seen.update(pids)
        return pids

    def stop(self) -> list[int]:
        """SIGTERM `ray start` (it stops what it started), then SIGKILL any
        process of its tree still running after a bounded wait."""
        tree = [self.proc.pid, *self.pids(), *self.seen]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        left = self.procs.wait_gone(tree, 30)
        self.procs.kill_pids(left)
        self.procs.wait_gone(left, 10)
        return left


@pytest.fixture(scope="module")
def ray_root() -> Iterator[Path]:
    # Short: Ray's unix sockets live under it and a socket path has 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="lray"))
    os.environ.update(RAY_ENV, RAY_TMPDIR=str(root / "driver"))
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield root
    finally:
        for k, v in _SAVED_ENV.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(ray_root: Path, procs: Any) -> Iterator[Head]:
    head = Head(ray_root, procs)
    try:
        head.wait_ready()
        yield head
    finally:
        forced = head.stop()
    assert not forced, f"Ray head processes had to be SIGKILLed: {forced}"


def _disconnect() -> None:
    from lucidity import engine

    lucidity.shutdown()
    engine._chosen, engine._getter = None, None


@pytest.fixture(scope="module", params=["head", "local"])
def engine(
    request: pytest.FixtureRequest, rt_app: Any, ray_root: Path, procs: Any
) -> Iterator[dict[str, Any]]:
    """This process on the Ray engine: {"mode", "node" (the caller's Ray
    node id), "head" (or None)}."""

    head: Head | None = None
    before = set(procs.children(os.getpid()))
    if request.param == "head":
        head = request.getfixturevalue("ray_head")
        lucidity.connect(head.address, engine="ray")
    else:
        lucidity.connect(engine="ray")
    ray_tree: list[int] = []
    try:
        from lucidity_rtapp import work_jobs

        # Connects (bounded: Ray retries an unreachable GCS for minutes).
        assert waits.bounded(lambda: work_jobs.square_remote(3), WAIT_S) == 9
        yield {
            "mode": request.param,
            "node": ray.get_runtime_context().get_node_id(),
            "head": head,
        }
    finally:
        # What the local Ray started: this process's new children and theirs.
        started = set(procs.children(os.getpid())) - before
        if head is not None:
            started.discard(head.proc.pid)
        ray_tree = [p for c in started for p in (c, *procs.descendants(c))]
        _disconnect()
    left = procs.wait_gone(ray_tree, 30)
    procs.kill_pids(left)
    assert not left, f"the local Ray left processes running: {left}"


@pytest.fixture
def app(engine: Any) -> Any:
    from lucidity_rtapp import work_jobs

    return work_jobs


@pytest.fixture
def work(engine: Any) -> Any:
    from lucidity_rtapp import work

    return work


# ---- selection -----------------------------------------------------------------


def test_import_lucidity_does_not_import_ray(rt_app: Any) -> None:
    code = (
        "import sys, lucidity\n"
        "from lucidity_rtapp import work_jobs\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "assert 'lucidity.ray' not in sys.modules\n"
    )
    env = {**rt_app.env, "LUCIDITY_ENGINE": "ray"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_unknown_engine_is_refused_with_the_allowed_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="allowed engines are 'zmq', 'ray'"):
        lucidity.connect(engine="spark")
    monkeypatch.setenv("LUCIDITY_ENGINE", "spark")
    from lucidity import engine

    monkeypatch.setattr(engine, "_getter", None)
    monkeypatch.setattr(engine, "_chosen", None)  # no connect(): the variable decides
    with pytest.raises(ValueError, match="LUCIDITY_ENGINE='spark'.*'zmq', 'ray'"):
        _stubs.run_remote(_stubs.JobRef("lucidity_rtapp.work:square"), (2,))


# ---- the five variants -----------------------------------------------------------


def test_engine_implements_the_protocol(engine: Any) -> None:
    from lucidity.engine import Engine, NodeInfo
    from lucidity.ray import get_engine

    eng = get_engine()
    assert isinstance(eng, Engine)
    nodes = eng.nodes()
    assert [n.id for n in nodes] == [engine["node"]]
    assert isinstance(nodes[0], NodeInfo) and nodes[0].slots >= 1
    assert nodes[0].address.startswith("127.0.0.1:")


def test_remote_and_remote_async(app: Any) -> None:
    assert app.square_remote(7) == 49
    job = app.square_remote_async(8)
    assert isinstance(job, lucidity.Job)
    assert isinstance(job, concurrent.futures.Future)
    assert job.await_get(timeout=WAIT_S) == 64


def test_remote_fanout(app: Any) -> None:
    assert app.pythagorean_remote_fanout([(3, 4), (5, 12), (8, 15)]) == [5, 13, 17]
    assert app.square_remote_fanout(range(20)) == [i * i for i in range(20)]
    assert app.square_remote_fanout(iter([3])) == [9]
    assert app.square_remote_fanout([]) == []
    assert app.first_remote_fanout([(1, 2), (3, 4)]) == [1, 3]
    # Many items go in batches; every value is there, in order.
    assert app.square_remote_fanout(range(5000)) == [i * i for i in range(5000)]


def test_items_that_wait_on_nested_jobs_share_a_batch(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Their waits go through Ray's (the task's wait hook), and the task
    # reports them: a parent that only waits costs a task of its own no more.
    from lucidity.ray import get_engine

    eng = get_engine()
    sizes: list[int] = []
    real = eng.submit_batch

    def spy(target: Any, options: Any, items: Any, *a: Any, **k: Any) -> Any:
        sizes.append(len(items))
        return real(target, options, items, *a, **k)

    monkeypatch.setattr(eng, "submit_batch", spy)
    assert app.wait_on_sleep_remote_fanout([0.02] * 120) == [0.02] * 120
    assert max(sizes) >= 4, sizes


def test_a_worker_keeps_nothing_of_the_jobs_it_waited_on(app: Any) -> None:
    assert app.tracked_after_remote(50) == 0


def test_local_runs_on_the_callers_ray_node(app: Any, engine: Any) -> None:
    assert app.square_local(6) == 36
    tag, pid, _, node_id = app.where_local(1)
    assert tag == 1 and pid != os.getpid()
    assert node_id == engine["node"]
    job = app.square_local_async(9)
    assert isinstance(job, lucidity.Job)
    assert job.await_get(timeout=WAIT_S) == 81
    assert app.pythagorean_local(3, 4) == 5.0  # nested from a local job


def test_fanout_keeps_input_order_with_varied_run_times(app: Any) -> None:
    items = [(i, ((i * 7) % 5) * 0.002) for i in range(300)]
    assert app.echo_after_remote_fanout(items) == list(range(300))
    rows = app.where_random_remote_fanout(range(40))
    assert [r[0] for r in rows] == list(range(40))


def test_job_is_a_future(app: Any) -> None:
    jobs = [app.echo_after_remote_async(i, 0.01 * i) for i in range(4)]
    seen = [j.result() for j in concurrent.futures.as_completed(jobs, timeout=WAIT_S)]
    assert sorted(seen) == [0, 1, 2, 3]
    job = app.sleep_remote_async(0.5)
    assert job.try_get() is None
    with pytest.raises(concurrent.futures.TimeoutError):
        job.await_get(timeout=0.01)
    assert job.await_get(timeout=WAIT_S) == 0.5 and job.try_get() == 0.5

    async def main() -> list[int]:
        return list(
            await asyncio.wait_for(
                asyncio.gather(*(app.square_remote_async(i) for i in range(4))), WAIT_S
            )
        )

    assert asyncio.run(main()) == [0, 1, 4, 9]


# ---- nesting (the head has ONE cpu) ------------------------------------------------


def test_nested_jobs_do_not_deadlock(app: Any) -> None:
    pairs = [(a, a + 1) for a in range(1, 11)]
    want = [((a * a + (a + 1) ** 2) ** 0.5) for a, _ in pairs]
    assert waits.bounded(lambda: app.pythagorean_remote_fanout(pairs), WAIT_S) == (
        pytest.approx(want)
    )
    jobs = [app.pythagorean_remote_async(3 * k, 4 * k) for k in range(1, 21)]
    done, not_done = concurrent.futures.wait(jobs, timeout=WAIT_S)
    assert not not_done
    assert [j.result() for j in jobs] == [5.0 * k for k in range(1, 21)]
    # nested_sum (job) -> sum_of_squares_remote (job) -> square fanout (jobs)
    assert waits.bounded(lambda: app.nested_sum_remote(12), WAIT_S) == (12, 506)
    got = waits.bounded(lambda: app.nested_sum_remote_fanout([3, 4, 5, 6]), WAIT_S)
    assert got == [(3, 5), (4, 14), (5, 30), (6, 55)]


# ---- errors ------------------------------------------------------------------------


def test_exception_keeps_type_and_remote_traceback(
    app: Any, work: Any, engine: Any
) -> None:
    with pytest.raises(work.AppError) as info:
        app.fail_remote("boom")
    exc = info.value
    assert type(exc) is work.AppError and str(exc) == "boom"
    cause = exc.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise AppError(message)" in cause.text
    assert engine["node"] in cause.text
    job = app.fail_remote_async("async boom")
    with pytest.raises(work.AppError, match="async boom"):
        job.await_get(timeout=WAIT_S)
    with pytest.raises(work.AppError, match="local boom"):
        app.fail_local("local boom")
    with pytest.raises(lucidity.RemoteError) as remote:
        app.fail_unpicklable_remote("cannot travel")
    assert remote.value.ename == "lucidity_rtapp.work.UnpicklableError"
    assert remote.value.node == engine["node"]


def test_fanout_failures(app: Any, work: Any, tmp_path: Path) -> None:
    items = [(str(tmp_path), i, 3, 0.0) for i in range(6)]
    items[5] = (str(tmp_path), 5, 5, 0.0)  # also fails, later in the input
    with pytest.raises(work.AppError, match="item 3 failed"):
        app.mark_remote_fanout(items)
    # A failure stops the rest: what was out finishes, nothing more starts.
    late = tmp_path / "late"
    late.mkdir()
    items = [(str(late), i, 0, 0.02) for i in range(200)]
    with pytest.raises(work.AppError, match="item 0 failed"):
        app.mark_remote_fanout(items)
    ran = len(list(late.iterdir()))
    assert ran < 199
    time.sleep(0.3)
    assert len(list(late.iterdir())) == ran


def test_retries_and_lost_workers(app: Any, work: Any, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert app.flaky_remote(str(tmp_path / "a"), 2) == 3  # retries=2: 3 runs
    with pytest.raises(work.AppError, match="run 3 failed"):
        app.flaky_remote(str(tmp_path / "b"), 5)
    assert len(list((tmp_path / "b").iterdir())) == 3
    with pytest.raises(WorkerLostError, match="attempt 3 of 3") as info:
        app.die_remote(3)
    assert "lucidity_rtapp.work:die" in str(info.value)
    assert app.square_remote(5) == 25


# ---- limits, timeout, cancel ---------------------------------------------------------


def test_memory_and_fuel_limits(app: Any) -> None:
    with pytest.raises(lucidity.MemoryLimitError, match="64 MiB"):
        app.hog_remote(256)
    assert app.hog_remote(8) == 8
    with pytest.raises(lucidity.FuelExhaustedError, match="fuel of 2"):
        app.spin_remote(10.0)
    assert app.spin_remote(0.01) > 0
    with pytest.raises(lucidity.MemoryLimitError):
        app.hog_remote_fanout([1, 2, 256])


def _announce(tmp_path: Path, options: dict[str, Any]) -> tuple[Any, Path]:
    ref: _stubs.JobRef[float] = _stubs.JobRef(
        "lucidity_rtapp.work:announce_then_sleep", options
    )
    return ref, tmp_path / "pid"


def _started(flag: Path) -> int:
    return int(
        waits.wait_until(lambda: flag.exists() and flag.read_text(), WAIT_S, "the job")
    )


def test_timeout_stops_the_running_job(engine: Any, tmp_path: Path, procs: Any) -> None:
    ref, flag = _announce(tmp_path, {"timeout": 2.0})
    start = time.monotonic()
    with pytest.raises(lucidity.JobTimeoutError, match="timeout of 2.0 s"):
        _stubs.run_remote(ref, (str(flag), 60.0))
    assert time.monotonic() - start < 30
    assert procs.wait_gone([_started(flag)], 20) == []


def test_cancel_stops_the_running_job(app: Any, tmp_path: Path, procs: Any) -> None:
    ref, flag = _announce(tmp_path, {})
    job = _stubs.submit_remote(ref, (str(flag), 60.0))
    pid = _started(flag)
    assert job.cancel()
    assert job.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        job.await_get(timeout=1)
    assert procs.wait_gone([pid], 20) == []
    done = app.square_remote_async(3)
    assert done.await_get(timeout=WAIT_S) == 9
    assert not done.cancel()


# ---- code shipping, versions, status, loopback (the head) ----------------------------

VERSIONED = """
from lucidity import job


@job
def version() -> tuple[int, str]:
    return {n}, __file__


@job
def nested_versions(k: int) -> list[int]:
    from lucidity_rayver.ver_jobs import version_remote_fanout

    return [v for v, _ in version_remote_fanout([()] * k)]
"""

DRIVER = """
import sys
sys.path.insert(0, {root!r})
from lucidity_rayver import ver_jobs
# Only this process has the app on its path, and not even that any more.
sys.path.remove({root!r})
import lucidity_rayver
assert lucidity_rayver.__file__.startswith({root!r})
files = {{f for _, f in ver_jobs.version_remote_fanout([()] * 40)}}
print("VERSIONS", sorted(set(ver_jobs.nested_versions_remote_fanout([5] * 8)[0])))
print("VALUE", ver_jobs.version_remote()[0])
print("FILES", *sorted(files))
"""


def _versioned_app(root: Path, n: int) -> Path:
    pkg = root / "lucidity_rayver"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ver.py").write_text(VERSIONED.format(n=n))
    gen = subprocess.run(
        [sys.executable, "-m", "lucidity.codegen", str(pkg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gen.returncode == 0, gen.stderr
    return root


def test_code_reaches_a_head_started_in_an_empty_folder_and_versions_never_mix(
    ray_head: Head, tmp_path: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "LUCIDITY_ENGINE")
    }
    env.update(RAY_ADDRESS=ray_head.address, LUCIDITY_ENGINE="ray")
    drivers = []
    for n in (1, 2):
        root = _versioned_app(tmp_path / f"v{n}", n)
        cwd = tmp_path / f"cwd{n}"
        cwd.mkdir()
        drivers.append(
            subprocess.Popen(
                [sys.executable, "-c", DRIVER.format(root=str(root))],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for n, proc in enumerate(drivers, 1):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
        assert lines["VALUE"] == [str(n)]
        assert lines["VERSIONS"] == [f"[{n}]"]
        # Imported from what Ray unpacked, not from the app's folder.
        assert all(str(tmp_path) not in f for f in lines["FILES"]), lines["FILES"]
        assert all("runtime_resources" in f for f in lines["FILES"]), lines["FILES"]


def test_status_shows_rays_nodes(ray_head: Head) -> None:
    env = {**os.environ, "RAY_ADDRESS": ray_head.address}
    out = subprocess.run(
        [sys.executable, "-m", "lucidity", "status", "--engine", "ray"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "1 Ray node(s)" in out.stdout
    row = next(line for line in out.stdout.splitlines() if "127.0.0.1:" in line)
    assert row.split()[-1] == "yes"  # the head


def _connections() -> list[tuple[int, str, str]]:
    """(pid, local, peer) of every TCP connection on the machine (ss -tnp)."""
    out = subprocess.run(
        ["ss", "-tnpH"], capture_output=True, text=True, timeout=30
    ).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 6 or "pid=" not in cols[-1]:
            continue
        for part in cols[-1].split("pid=")[1:]:
            rows.append((int(part.split(",")[0]), cols[3], cols[4]))
    return rows


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2)")
def test_ray_stays_on_loopback(app: Any, engine: Any, procs: Any) -> None:
    assert app.pythagorean_remote_fanout([(3, 4)] * 4) == [5.0] * 4
    ours = {os.getpid(), *procs.descendants(os.getpid())}
    if engine["head"] is not None:
        ours |= {engine["head"].proc.pid, *engine["head"].pids()}
    rows = [r for r in _connections() if r[0] in ours]
    assert rows, "no TCP connection of Ray's processes seen"
    # A dual-stack socket shows 127.0.0.1 as [::ffff:127.0.0.1].
    loop = ("127.0.0.1:", "[::ffff:127.0.0.1]:")
    outside = [r for r in rows if not (r[1].startswith(loop) and r[2].startswith(loop))]
    assert not outside, outside


# ---- the Executor and the joblib backend on Ray ------------------------------------


def test_executor_runs_on_ray(engine: Any, work: Any) -> None:
    from lucidity.ray import RayEngine

    with lucidity.Executor() as ex:
        assert isinstance(ex._engine, RayEngine)
        assert ex.submit(work.square, 12).result(timeout=WAIT_S) == 144
        assert list(ex.map(work.square, range(50))) == [i * i for i in range(50)]


def test_joblib_parallel_runs_on_ray(
    engine: Any, work: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    joblib = pytest.importorskip("joblib", reason="joblib is a test dependency")
    import lucidity.joblib  # noqa: F401 - registers the backend

    monkeypatch.setenv("LUCIDITY_ENGINE", "ray")
    with joblib.parallel_config(backend="lucidity"):
        got = joblib.Parallel(n_jobs=2)(
            joblib.delayed(work.square)(i) for i in range(30)
        )
    assert got == [i * i for i in range(30)]
