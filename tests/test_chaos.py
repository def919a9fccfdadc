"""Chaos and fault integration tests: real daemons, real faults.

Each test starts its own small cluster (a control and one or two nodes with
one worker each) from a tmp dir, runs jobs of a tiny app package written here
(`chaosapp`, shipped to the nodes as a code bundle), and injects a fault:
SIGKILL / SIGSTOP of a node, a control restart on the same port, a killed
worker, garbage at every port, a dying client, resource limits, cancellation.

Every process is started and ended through conftest's `make_daemons` factory
(by pid: SIGCONT, SIGTERM, a bounded wait, SIGKILL; workers found through /proc
are ended too), every wait is bounded, and only 127.0.0.1 is used.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from waits import bounded, in_thread, wait_until

import lucidity
from lucidity import _stubs
from lucidity.cluster.security import default_keys, secure_client
from lucidity.cluster.wire import protocol as p
from lucidity.errors import WorkerLostError

APP = "chaosapp"
READY_S = 15.0
STOP_S = 5.0

APP_SOURCE = '''
"""Jobs of the chaos tests (called by reference, no generated stubs)."""

import os
import signal
import time
from pathlib import Path

from lucidity import _stubs

SQUARE = _stubs.JobRef("chaosapp.jobs:square")
LEVEL2 = _stubs.JobRef("chaosapp.jobs:level2")


def square(x):
    return x * x


def slow_square(x, delay, progress_dir):
    time.sleep(delay)
    Path(progress_dir, f"{x}-{os.getpid()}").touch()
    return x * x


def report_then_sleep(path, seconds, value):
    """Append "pid ppid node-id" to `path`, sleep, return (value, pid, ppid)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {os.getppid()} {os.environ.get('LUCIDITY_NODE_ID')}\\n")
    time.sleep(seconds)
    return value, os.getpid(), os.getppid()


def exit_now(code):
    os._exit(code)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def alloc(mb):
    block = bytearray(mb * 1024 * 1024)
    return len(block)


def burn():
    x = 0
    while True:
        x += 1


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def term_marker(pid_path, marker, seconds):
    def on_term(signum, frame):
        Path(marker).write_text("SIGTERM seen")

    signal.signal(signal.SIGTERM, on_term)
    Path(pid_path).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "finished"


def level2(n):
    return sum(_stubs.fanout(SQUARE, [(i,) for i in range(n)]))


def level1(n):
    return sum(_stubs.fanout(LEVEL2, [(i,) for i in range(1, n + 1)]))


def nested_square(x):
    return _stubs.run_remote(SQUARE, (x,)) + 1


def import_missing():
    import chaos_no_such_module_q7  # noqa: F401

    return "impossible"
'''


def ref(name: str, **options: Any) -> _stubs.JobRef[Any]:
    return _stubs.JobRef(f"{APP}.jobs:{name}", options)


# ---- helpers ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lines(path: Path) -> list[list[str]]:
    try:
        return [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []


def _clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("LUCIDITY_CONTROL", "LUCIDITY_NODE", "LUCIDITY_NODE_ID", "PYTHONPATH"):
        env.pop(name, None)
    env.update(extra)
    return env


@dataclass
class Cluster:
    """The chaos tests' settings over conftest's daemon factory (`daemons`
    starts, signals and ends every process; `Daemon`s are conftest's): a
    control that drops a node after 1.5 s of silence, nodes with one worker,
    250 ms heartbeats and a cache of their own under `tmp`."""

    tmp: Path
    daemons: Any  # conftest.Daemons, run from the app's folder

    def control(self, bind: str = "tcp://127.0.0.1:*") -> Any:
        return self.daemons.start("control", "--bind", bind, "--dead-after-ms", "1500")

    def node(self, control: str, *args: str, **kw: Any) -> Any:
        cache = self.tmp / f"cache-{len(self.daemons.started)}"
        return self.daemons.node(
            control,
            "--heartbeat-ms",
            "250",
            "--cache",
            str(cache),
            *args,
            **kw,
        )

    def start(self, nodes: int = 2) -> tuple[Any, list[Any]]:
        ctl = self.control()
        ns = [self.node(ctl.endpoint) for _ in range(nodes)]
        connect(ctl.endpoint, nodes)
        return ctl, ns

    def spawn(self, kind: str, argv: list[str]) -> Any:
        return self.daemons.spawn(kind, argv)

    def signal(self, proc: Any, sig: int) -> None:
        self.daemons.signal(proc, sig)


def connect(control: str, nodes: int) -> list[dict[str, Any]]:
    from lucidity.cluster.client import get_client

    lucidity.connect(control)
    return get_client().wait_for_nodes(nodes, timeout=READY_S)


def forget_client() -> None:
    from lucidity.cluster.client import core as client

    try:
        lucidity.shutdown()
    except zmq.ZMQError as exc:
        # A client whose I/O thread died closed its own sockets; close() then
        # fails (see test_heartbeat_with_bogus_addr_does_not_break_clients).
        warnings.warn(f"lucidity.shutdown() failed: {exc!r}", stacklevel=1)
    finally:
        client._address = None


# ---- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("chaosapp")
    pkg = root / APP
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""The chaos tests\' app."""\n')
    (pkg / "jobs.py").write_text(APP_SOURCE)
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name == APP or name.startswith(APP + "."):
                del sys.modules[name]


@pytest.fixture
def cluster(app_root: Path, tmp_path: Path, make_daemons: Any) -> Iterator[Cluster]:
    # Daemons run from the app's folder with only it on their path; conftest's
    # `make_daemons` ends them all after `forget_client` below.
    daemons = make_daemons(app_root, _clean_env(PYTHONPATH=str(app_root)))
    try:
        yield Cluster(tmp_path, daemons)
    finally:
        forget_client()


# ---- 1. a node SIGKILLed mid-fanout ------------------------------------------------


def test_node_killed_mid_fanout_loses_no_item(cluster: Cluster, tmp_path: Path) -> None:
    _, nodes = cluster.start(2)
    progress = tmp_path / "progress"
    progress.mkdir()
    items = [(i, 0.05, str(progress)) for i in range(60)]
    fut = in_thread(lambda: _stubs.fanout(ref("slow_square"), items))
    wait_until(lambda: len(list(progress.iterdir())) >= 4, 15, "first results")
    cluster.signal(nodes[1], signal.SIGKILL)
    assert fut.result(40) == [i * i for i in range(60)]
    assert nodes[0].proc.poll() is None


def test_node_killed_mid_chunk_runs_the_chunk_again_elsewhere(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of many items (about 1 s each): a node SIGKILLed halfway through
    one loses the whole chunk, which runs again on the other node."""
    from lucidity import chunks
    from lucidity.cluster.client import get_client

    _, nodes = cluster.start(2)
    monkeypatch.setattr(chunks, "CHUNK_TARGET_S", 1.0)
    client = get_client()
    sent: list[tuple[str, list[int]]] = []  # (node, the chunk's items)
    real = client.submit

    def spy(target: str, options: Any, args: Any, **kw: Any) -> Any:
        items = [a[0] for a in args] if kw.get("batch") else [args[0]]
        sent.append((kw.get("addr") or "", items))
        return real(target, options, args, **kw)

    monkeypatch.setattr(client, "submit", spy)
    progress = tmp_path / "progress"
    progress.mkdir()
    items = [(i, 0.05, str(progress)) for i in range(100)]
    fut = in_thread(lambda: _stubs.fanout(ref("slow_square"), items))

    def done(x: int) -> list[str]:
        return [f.name for f in progress.glob(f"{x}-*")]

    def halfway() -> list[int] | None:
        # A chunk of many on the node to kill, begun, with >= 8 items to go
        # (>= 400 ms, so it cannot finish before the kill lands).
        for addr, chunk in list(sent):
            if addr == nodes[1].endpoint and len(chunk) > 8:
                ran = sum(1 for x in chunk if done(x))
                if 1 <= ran <= len(chunk) - 8:
                    return chunk
        return None

    chunk = wait_until(halfway, 30, "a chunk of many halfway on the node")
    ran_before = [x for x in chunk if done(x)]
    cluster.signal(nodes[1], signal.SIGKILL)
    assert fut.result(60) == [i * i for i in range(100)]
    assert nodes[0].proc.poll() is None
    # The items of the lost chunk that had run ran again, on the other node.
    for x in ran_before:
        assert len(done(x)) == 2, (x, done(x))
    assert all(done(x) for x in chunk)


# ---- 2. a node SIGSTOPped while running a job ------------------------------------


def test_stopped_node_job_completes_elsewhere(cluster: Cluster, tmp_path: Path) -> None:
    _, nodes = cluster.start(2)
    by_pid = {n.pid: n for n in nodes}
    report = tmp_path / "report"
    fut = in_thread(
        lambda: _stubs.run_remote(
            ref("report_then_sleep", sync_retry_interval_ms=50), (str(report), 1.0, 42)
        )
    )
    first = wait_until(lambda: lines(report), 15, "the job to start")[0]
    stopped = by_pid[int(first[1])]
    cluster.signal(stopped, signal.SIGSTOP)  # SIGCONT comes in stop_all
    t0 = time.monotonic()
    value, _pid, ppid = fut.result(15)
    elapsed = time.monotonic() - t0
    assert value == 42
    assert ppid != stopped.pid, "the job's result came from the stopped node"
    assert ppid in by_pid
    # Silence seen after 20 x 50 ms (or control's 1.5 s), plus the 1 s rerun:
    # about 2.5 s; the ceiling leaves room for a loaded machine.
    assert elapsed < 10, elapsed
    assert len(lines(report)) == 2


# ---- 3. control restarted on the same port ---------------------------------------


def _status(control: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "lucidity", "status", "--control", control]
        + ["--timeout-ms", "1000"],
        capture_output=True,
        text=True,
        timeout=15,
        env=_clean_env(),
    )
    return out.stdout if out.returncode == 0 else ""


def test_control_restart_on_same_port(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    bind = f"tcp://127.0.0.1:{port}"
    ctl = cluster.control(bind)
    assert ctl.endpoint == bind
    nodes = [cluster.node(bind) for _ in range(2)]
    connect(bind, 2)
    report = tmp_path / "report"
    job = _stubs.submit_remote(ref("report_then_sleep"), (str(report), 2.0, 7))
    wait_until(lambda: lines(report), 15, "the job to start")

    cluster.signal(ctl, signal.SIGKILL)
    time.sleep(0.3)
    for attempt in range(20):  # the port may linger for a moment
        try:
            cluster.control(bind)
            break
        except RuntimeError:
            if attempt == 19:
                raise
            time.sleep(0.1)

    # The job that ran across the restart is not disturbed (not re-run).
    assert bounded(lambda: job.result(10), 15)[0] == 7
    assert len(lines(report)) == 1

    addrs = [n.endpoint for n in nodes]
    wait_until(
        lambda: all(a in _status(bind) for a in addrs), 10, "status to list both nodes"
    )
    from lucidity.cluster.client import get_client

    assert {n["addr"] for n in get_client().nodes()} == set(addrs)
    squares = bounded(
        lambda: _stubs.fanout(ref("square"), [(i,) for i in range(20)]), 20
    )
    assert squares == [i * i for i in range(20)]
    assert all(n.proc.poll() is None for n in nodes)


# ---- 4. a worker killed mid-job; a job that kills its worker every time ----------


def test_worker_killed_mid_job_is_retried_and_replaced(
    cluster: Cluster, tmp_path: Path
) -> None:
    _, (node,) = cluster.start(1)
    report = tmp_path / "report"
    fut = in_thread(
        lambda: _stubs.run_remote(ref("report_then_sleep"), (str(report), 1.0, 5))
    )
    victim = int(wait_until(lambda: lines(report), 15, "the job to start")[0][0])
    assert victim in node.workers()
    os.kill(victim, signal.SIGKILL)
    value, pid, ppid = fut.result(20)
    assert value == 5
    assert pid != victim and ppid == node.pid
    assert [int(ln[0]) for ln in lines(report)] == [victim, pid]
    wait_until(lambda: node.workers() and victim not in node.workers(), 10, "respawn")

    t0 = time.monotonic()
    with pytest.raises(WorkerLostError, match=r"exited with 1.*attempt 3 of 3"):
        bounded(lambda: _stubs.run_remote(ref("exit_now"), (1,)), 30)
    with pytest.raises(WorkerLostError, match=r"killed by signal 9"):
        bounded(lambda: _stubs.run_remote(ref("kill_self"), ()), 30)
    assert time.monotonic() - t0 < 25
    assert node.proc.poll() is None
    assert bounded(lambda: _stubs.run_remote(ref("square"), (9,)), 15) == 81


# ---- 5. garbage at every port --------------------------------------------------------


def _garbage(rng: random.Random) -> list[list[bytes]]:
    M, V = p.MAGIC, bytes((p.VERSION,))

    def head(t: p.MsgType, body: bytes) -> bytes:
        return M + V + bytes((int(t),)) + body

    msgs: list[list[bytes]] = [
        [b""],
        [b"x"],
        [rng.randbytes(200)],
        [rng.randbytes(rng.randrange(1, 50)) for _ in range(6)],
        [b"XX" + V + b"\x01{}"],  # wrong magic
        [M + b"\x02\x01{}"],  # wrong version
        [M + b"\x00\x01{}"],  # version 0
        [M + V + b"\xff{}"],  # unknown type
        [head(p.MsgType.HEARTBEAT, b'{"pad":"' + b"a" * 70_000 + b'"}')],  # > 64 KiB
        [M],  # truncated
        [M + V],  # truncated
        [head(p.MsgType.SUBMIT, b"\xff\xfenot json")],
        [head(p.MsgType.SUBMIT, b"{not json")],
        [head(p.MsgType.SUBMIT, b"[1,2,3]")],
        [head(p.MsgType.HEARTBEAT, b"{}")],
        [head(p.MsgType.HEARTBEAT, b'{"node":"n","addr":"a","workers":"many"}')],
        [head(p.MsgType.SUBSCRIBE, b"[]")],
        [head(p.MsgType.SUBMIT, b"{}"), b"payload"],
        [head(p.MsgType.SUBMIT, b'{"id":"x","target":"a:b"}'), b"payload"],
        [head(p.MsgType.SUBMIT, b'{"id":1,"target":5}'), b"payload"],
        [head(p.MsgType.SUBMIT, b'{"id":2,"target":"a:b"}')],  # no payload
        [head(p.MsgType.SUBMIT, b'{"id":3,"target":"a:b","bundle":"../x"}'), b"p"],
        # well-formed headers with a field of the wrong type or range: dropped
        # whole (they used to take the one worker slot for good)
        *(
            [
                head(
                    p.MsgType.SUBMIT,
                    b'{"id":%d,"target":"chaosapp.jobs:square",%s}' % (50 + n, field),
                ),
                p.dumps_payload((n,))[0],
            ]
            for n, field in enumerate(
                [
                    b'"memory":"x"',
                    b'"fuel":[1]',
                    b'"fuel":-1',
                    b'"set_ms":"x"',
                    b'"depth":1.5',
                    b'"shm":"yes"',
                    b'"batch":7',
                    b'"memory":true',
                ]
            )
        ),
        [head(p.MsgType.CANCEL, b'{"id":1,"grace_ms":"x"}')],
        # well-formed header, a payload that is not a pickle: the job fails
        [head(p.MsgType.SUBMIT, b'{"id":4,"target":"chaosapp.jobs:square"}'), b"junk"],
        [head(p.MsgType.CANCEL, b'{"id":"nope"}')],
        [head(p.MsgType.CANCEL, b"{}")],
        [head(p.MsgType.BUNDLE, b"{}")],
        [head(p.MsgType.BUNDLE, b'{"bundle":"' + b"0" * 64 + b'"}'), b"junk"],
        [head(p.MsgType.RESULT, b'{"id":1,"ok":true}'), b"junk"],
        [head(p.MsgType.DONE, b"{}")],
        [head(p.MsgType.PING, b"{}"), rng.randbytes(1000)],
    ]
    return msgs


def _spray(endpoint: str, msgs: list[list[bytes]], rng: random.Random) -> None:
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        # An authorised member (this user's keys, as the daemons'):
        # a stranger is refused at the handshake (test_security_cluster).
        secure_client(sock, default_keys())
        sock.connect(endpoint)
        for msg in msgs:
            sock.send_multipart(msg)
        time.sleep(0.3)
        sock.close(0)
    finally:
        ctx.term()
    # Not even ZMTP: raw bytes, a bad greeting, a half greeting.
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    for blob in (
        rng.randbytes(4096),
        b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 48,
        b"\xff\x00\x00",
    ):
        with socket.create_connection((host, int(port)), timeout=2) as s:
            try:
                s.sendall(blob)
            except OSError:
                pass


def test_garbage_at_every_port(cluster: Cluster) -> None:
    ctl, nodes = cluster.start(2)
    rng = random.Random(1234)
    msgs = _garbage(rng)
    for proc in (ctl, *nodes):
        _spray(proc.endpoint, msgs, rng)
    time.sleep(0.5)
    for proc in (ctl, *nodes):
        assert proc.proc.poll() is None, f"{proc.kind} died:\n{proc.log_text()}"
    squares = bounded(
        lambda: _stubs.fanout(ref("square"), [(i,) for i in range(10)]), 20
    )
    assert squares == [i * i for i in range(10)]
    assert "dropped" in ctl.log_text()
    assert all("dropped" in n.log_text() for n in nodes)
    # Dropped before acting on them: no handler failed half-way.
    for proc in (ctl, *nodes):
        assert "event handler failed" not in proc.log_text(), proc.log_text()
    for proc in (ctl, *nodes):
        assert proc.proc.poll() is None, f"{proc.kind} died:\n{proc.log_text()}"


def test_pathological_json_header_does_not_kill_daemons(cluster: Cluster) -> None:
    ctl, (node,) = cluster.start(1)
    M, V = p.MAGIC, bytes((p.VERSION,))
    deep = M + V + bytes((int(p.MsgType.HEARTBEAT),)) + b"[" * 50_000
    bigint = M + V + bytes((int(p.MsgType.PING),)) + b'{"a":' + b"1" * 5000 + b"}"
    ctx = zmq.Context()
    try:
        for endpoint in (ctl.endpoint, node.endpoint):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            # An authorised member (this user's keys, as the daemons'):
            # a stranger is refused at the handshake (test_security_cluster).
            secure_client(sock, default_keys())
            sock.connect(endpoint)
            sock.send_multipart([deep])
            sock.send_multipart([bigint])
            time.sleep(0.3)
            sock.close(0)
    finally:
        ctx.term()
    # A daemon whose loop raised takes a moment to stop its workers and exit.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and None in (ctl.proc.poll(), node.proc.poll()):
        time.sleep(0.05)
    dead = [
        (d.kind, d.log_text()[-600:]) for d in (ctl, node) if d.proc.poll() is not None
    ]
    assert not dead


def test_heartbeat_with_bogus_addr_does_not_break_clients(cluster: Cluster) -> None:
    ctl, _ = cluster.start(1)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        # An authorised member (this user's keys, as the daemons'):
        # a stranger is refused at the handshake (test_security_cluster).
        secure_client(sock, default_keys())
        sock.connect(ctl.endpoint)
        body = b'{"node":"fake0000","addr":"not-an-endpoint","workers":1}'
        for _ in range(4):
            sock.send(p.MAGIC + bytes((p.VERSION, int(p.MsgType.HEARTBEAT))) + body)
            time.sleep(0.25)
        sock.close(0)
    finally:
        ctx.term()
    assert ctl.proc.poll() is None
    squares = bounded(lambda: _stubs.fanout(ref("square"), [(i,) for i in range(6)]), 8)
    assert squares == [i * i for i in range(6)]


# ---- 6. nested fanout, three levels, one worker per node -------------------------


def test_nested_fanout_three_levels_one_worker_each(cluster: Cluster) -> None:
    cluster.start(2)
    n = 4
    expected = sum(sum(i * i for i in range(j)) for j in range(1, n + 1))
    t0 = time.monotonic()
    assert bounded(lambda: _stubs.run_remote(ref("level1"), (n,)), 40) == expected
    assert time.monotonic() - t0 < 30


# ---- 7. code shipping to a node in an empty folder ----------------------------------


def test_node_in_empty_folder_runs_shipped_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    ctl = cluster.control()
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "shipcache"
    cluster.daemons.node(
        ctl.endpoint,
        "--heartbeat-ms",
        "250",
        "--cache",
        str(cache),
        cwd=empty,
        env=_clean_env(),
    )
    (info,) = connect(ctl.endpoint, 1)
    assert bounded(lambda: _stubs.run_remote(ref("square"), (12,)), 20) == 144
    assert bounded(lambda: _stubs.run_remote(ref("nested_square"), (5,)), 20) == 26
    assert list(empty.iterdir()) == []
    assert [f.suffix for f in cache.iterdir()] == [".zip"]
    with pytest.raises(ModuleNotFoundError) as err:
        bounded(lambda: _stubs.run_remote(ref("import_missing"), ()), 20)
    assert "chaos_no_such_module_q7" in str(err.value)
    assert info["id"] in str(err.value)


# ---- 8. memory, fuel, timeout, cancel, shutdown grace -----------------------------


def test_limits_cancel_and_shutdown_grace(
    cluster: Cluster, tmp_path: Path, procs: Any
) -> None:
    _, (node,) = cluster.start(1)
    square = ref("square")

    with pytest.raises(lucidity.MemoryLimitError):
        bounded(lambda: _stubs.run_remote(ref("alloc", memory=64 * 2**20), (200,)), 20)
    assert bounded(lambda: _stubs.run_remote(square, (3,)), 15) == 9

    # Bounds on what must happen (the burn never ends, the sleep is 10 s),
    # generous for a loaded 2-core machine: 200 ms of CPU can take seconds.
    t0 = time.monotonic()
    with pytest.raises(lucidity.FuelExhaustedError):
        bounded(lambda: _stubs.run_remote(ref("burn", fuel=2), ()), 15)
    assert time.monotonic() - t0 < 10

    t0 = time.monotonic()
    with pytest.raises(lucidity.JobTimeoutError):
        bounded(lambda: _stubs.run_remote(ref("sleep_for", timeout=0.3), (10,)), 15)
    assert time.monotonic() - t0 < 5
    assert bounded(lambda: _stubs.run_remote(square, (4,)), 15) == 16

    # Cancel a running job: its worker is stopped and replaced.
    report = tmp_path / "report"
    job = _stubs.submit_remote(ref("report_then_sleep"), (str(report), 10, 1))
    victim = int(wait_until(lambda: lines(report), 15, "the job to start")[0][0])
    assert job.cancel() is True
    wait_until(lambda: not procs.alive(victim), 5, "the cancelled job's worker to end")
    wait_until(lambda: node.workers(), 10, "a new worker")
    assert bounded(lambda: _stubs.run_remote(square, (5,)), 15) == 25

    # Shutdown grace: SIGTERM first, SIGKILL shutdown_retry_interval_ms later.
    pid_path, marker = tmp_path / "pid", tmp_path / "marker"
    job = _stubs.submit_remote(
        ref("term_marker", shutdown_retry_interval_ms=2000),
        (str(pid_path), str(marker), 30),
    )
    victim = int(
        wait_until(lambda: pid_path.exists() and pid_path.read_text(), 15, "pid")
    )
    t0 = time.monotonic()
    assert job.cancel() is True
    wait_until(marker.exists, 3, "the job's SIGTERM handler to write its marker")
    assert procs.alive(victim)  # still in its grace period
    wait_until(lambda: not procs.alive(victim), 6, "SIGKILL after the grace")
    assert time.monotonic() - t0 > 1.5
    assert bounded(lambda: _stubs.run_remote(square, (6,)), 15) == 36
    assert node.proc.poll() is None


# ---- 9. a client that dies -----------------------------------------------------------

CLIENT_SCRIPT = textwrap.dedent("""
    import sys, time
    import lucidity
    from lucidity import _stubs
    from lucidity.cluster.client import get_client

    lucidity.connect(sys.argv[1])
    get_client().wait_for_nodes(1, timeout=15)
    job = _stubs.submit_remote(
        _stubs.JobRef("chaosapp.jobs:report_then_sleep"), (sys.argv[2], 60, 1)
    )
    print("LUCIDITY-READY submitted", flush=True)
    time.sleep(120)
    """)


def test_dead_client_jobs_are_dropped(
    cluster: Cluster, tmp_path: Path, procs: Any
) -> None:
    ctl, (node,) = cluster.start(1)
    report = tmp_path / "report"
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    client = cluster.spawn(
        "client", [sys.executable, str(script), ctl.endpoint, str(report)]
    )
    victim = int(
        wait_until(lambda: lines(report), 15, "the client's job to start")[0][0]
    )
    cluster.signal(client, signal.SIGKILL)
    t0 = time.monotonic()
    assert bounded(lambda: _stubs.run_remote(ref("square"), (11,)), 25) == 121
    elapsed = time.monotonic() - t0
    assert not procs.alive(victim)
    assert elapsed < 18, elapsed
    assert node.proc.poll() is None
