"""The cluster as a whole: `lucidity status`, no nodes, late nodes, lost nodes,
malformed frames, and daemons refusing bad options."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

import lucidity
from lucidity import _stubs
from lucidity.cluster.client import get_client
from lucidity.cluster.security import default_keys, secure_client

WAIT_S = 20.0
CLI_TIMEOUT_S = 20.0


def _lucidity(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lucidity", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
    )


def _free_port() -> int:
    """A port nothing listens on (bound, then closed again at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- lucidity status ----------------------------------------------------------


def test_status_prints_both_nodes(rt_cluster: Any) -> None:
    out = _lucidity("status", "--control", rt_cluster.control)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "ADDRESS", "PID"]
    for addr, node_id in rt_cluster.node_ids.items():
        row = next(line for line in lines if line.startswith(node_id))
        assert addr in row
        pid = rt_cluster.node_pids[rt_cluster.nodes.index(addr)]
        assert row.split()[2] == str(pid)
    assert lines[-1] == f"2 node(s) at {rt_cluster.control}"


def test_status_without_control_fails_naming_the_address() -> None:
    addr = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    out = _lucidity("status", "--control", addr, "--timeout-ms", "300")
    assert out.returncode == 1
    assert addr in out.stderr
    assert "no answer from control" in out.stderr
    assert out.stdout == ""
    assert time.monotonic() - start < 10


# ---- no nodes -----------------------------------------------------------------


def test_no_node_is_no_nodes_error_in_bounded_time(rt_daemons: Any) -> None:
    control = rt_daemons.control()
    lucidity.connect(control.endpoint)
    get_client().nodes(timeout=0)  # start the client; it syncs in the background
    ref: _stubs.JobRef[Any] = _stubs.JobRef("m:f", {"init_retry_interval_ms": 20})
    start = time.monotonic()
    with pytest.raises(lucidity.NoNodesError) as info:
        _stubs.submit_remote(ref, ()).await_get(timeout=WAIT_S)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert control.endpoint in message
    assert "lucidity node --control" in message  # says what to do
    assert isinstance(info.value, lucidity.ClusterError)


def test_no_node_fails_a_fanout_too(rt_daemons: Any) -> None:
    control = rt_daemons.control()
    lucidity.connect(control.endpoint)
    ref: _stubs.JobRef[Any] = _stubs.JobRef("m:f", {"init_retry_interval_ms": 20})
    start = time.monotonic()
    with pytest.raises(lucidity.NoNodesError, match="lucidity node --control"):
        _stubs.fanout(ref, [(1,), (2,)])
    assert time.monotonic() - start < 5


def test_no_control_is_no_nodes_error_naming_the_address(rt_daemons: Any) -> None:
    addr = f"tcp://127.0.0.1:{_free_port()}"
    lucidity.connect(addr)
    ref: _stubs.JobRef[Any] = _stubs.JobRef("m:f", {"init_retry_interval_ms": 20})
    start = time.monotonic()
    with pytest.raises(lucidity.NoNodesError) as info:
        _stubs.run_remote(ref, ())
    assert time.monotonic() - start < 5
    assert addr in str(info.value)
    assert "lucidity control" in str(info.value)


def test_connect_refuses_a_non_endpoint() -> None:
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        lucidity.connect("127.0.0.1:3030")


# ---- nodes joining and leaving ------------------------------------------------


def test_node_joining_later_picks_up_a_parked_job(
    rt_daemons: Any, bounded: Any
) -> None:
    control = rt_daemons.control()
    lucidity.connect(control.endpoint)
    # 10 x 1000 ms to find a node: the node below starts well within that.
    # (An async submit waits by async_init_retry_interval_ms, not init_...)
    square: _stubs.JobRef[int] = _stubs.JobRef(
        "lucidity_rtapp.work:square", {"async_init_retry_interval_ms": 1000}
    )
    job = _stubs.submit_remote(square, (7,))
    assert job.try_get() is None
    node = rt_daemons.node(control.endpoint)
    assert job.await_get(timeout=WAIT_S) == 49
    where: _stubs.JobRef[Any] = _stubs.JobRef("lucidity_rtapp.work:where")
    assert _stubs.run_remote(where, (0,))[2] == node.pid


def test_node_joining_later_takes_a_waiting_fanout(rt_daemons: Any) -> None:
    import threading

    control = rt_daemons.control()
    lucidity.connect(control.endpoint)
    square: _stubs.JobRef[int] = _stubs.JobRef(
        "lucidity_rtapp.work:square", {"init_retry_interval_ms": 1000}
    )
    out: list[Any] = []
    t = threading.Thread(
        target=lambda: out.append(_stubs.fanout(square, [(i,) for i in range(5)])),
        daemon=True,
    )
    t.start()
    rt_daemons.node(control.endpoint)
    t.join(WAIT_S)
    assert out == [[0, 1, 4, 9, 16]]


def test_job_on_a_killed_node_runs_elsewhere(rt_daemons: Any, tmp_path: Path) -> None:
    control = rt_daemons.control("--dead-after-ms", "400")
    nodes = [
        rt_daemons.node(control.endpoint, "--heartbeat-ms", "100") for _ in range(2)
    ]
    lucidity.connect(control.endpoint)
    get_client().wait_for_nodes(2, timeout=WAIT_S)
    ref: _stubs.JobRef[float] = _stubs.JobRef("lucidity_rtapp.work:announce_then_sleep")
    flag = tmp_path / "pid"
    job = _stubs.submit_remote(ref, (str(flag), 1.0))
    deadline = time.monotonic() + WAIT_S
    while not (flag.exists() and flag.read_text()):
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.01)
    first_worker = int(flag.read_text())
    victim = next(n for n in nodes if _parent(first_worker) == n.pid)
    flag.unlink()
    os.kill(victim.pid, signal.SIGKILL)
    assert job.await_get(timeout=WAIT_S) == 1.0
    survivor = next(n for n in nodes if n is not victim)
    assert _parent(int(flag.read_text())) == survivor.pid
    # The dead node's worker followed it (its stdin pipe closed).
    assert _gone(first_worker, 10)


def _parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if state[state.rindex(")") + 2] == "Z":
            return True
        time.sleep(0.02)
    return False


def test_malformed_frames_do_not_crash_the_daemons(
    rt_cluster: Any, rt_client: Any
) -> None:
    from lucidity_rtapp.work_jobs import square_remote_fanout

    ctx = zmq.Context()
    try:
        for addr in [rt_cluster.control, *rt_cluster.nodes]:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            # An authorised member (this user's keys, as the daemons'):
            # a stranger is refused at the handshake (test_security_cluster).
            secure_client(sock, default_keys())
            sock.connect(addr)
            for frames in (
                [b""],
                [b"garbage"],
                [b"LU\x01\x0a{not json", b"x"],
                [b"LU\x09\x0a{}", b"x"],  # another protocol version
                [b"LU\x01\xff{}"],  # unknown type
                [b"LU\x01\x0a[]", b"x"],  # not an object
                [b"LU\x01\x0a{}", b"x"],  # SUBMIT without id or target
                [b'LU\x01\x0a{"id": 1, "target": 5}', b"x"],
                [b'LU\x01\x0b{"id": "x"}'],  # CANCEL with a bad id
                [b'LU\x01\x01{"node": "n"}'],  # HEARTBEAT without addr
            ):
                sock.send_multipart(frames)
            sock.close(0)
    finally:
        ctx.term()
    out = _lucidity("status", "--control", rt_cluster.control)
    assert out.returncode == 0 and "2 node(s)" in out.stdout, out.stderr
    assert square_remote_fanout(range(6)) == [i * i for i in range(6)]
    for pid in rt_cluster.pids:
        assert _parent(pid) == os.getpid()  # still running


# ---- daemons refuse bad options -----------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["node", "--workers", "0"], "--workers: 0 must be >= 1"),
        (["node", "--workers", "many"], "'many' is not a whole number"),
        (["node", "--cpus", "x"], "--cpus: 'x' is not a CPU list (e.g. 0-3,6)"),
        (["node", "--cpus", "4095"], "--cpus: CPU 4095 is not available here"),
        (["control", "--dead-after-ms", "0"], "must be > 0 ms"),
        (["node", "--heartbeat-ms", "-5"], "must be > 0 ms"),
    ],
)
def test_daemon_refuses_bad_option(args: list[str], needle: str) -> None:
    out = _lucidity(*args)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "LUCIDITY-READY" not in out.stdout


@pytest.mark.parametrize("kind", ["control", "node"])
@pytest.mark.parametrize("address", ["bogus", "tcp://127.0.0.1:notaport"])
def test_daemon_refuses_bad_bind_address(kind: str, address: str) -> None:
    extra = ["--control", "tcp://127.0.0.1:1"] if kind == "node" else []
    out = _lucidity(kind, *extra, "--bind", address)
    assert out.returncode != 0
    assert f"lucidity {kind}: cannot bind {address}" in out.stderr
    assert "Traceback" not in out.stderr
    assert "LUCIDITY-READY" not in out.stdout


def test_daemon_refuses_an_address_in_use(rt_cluster: Any) -> None:
    out = _lucidity("control", "--bind", rt_cluster.control)
    assert out.returncode != 0
    assert f"cannot bind {rt_cluster.control}" in out.stderr
    assert "in use" in out.stderr


def test_daemon_without_keys_flag_is_never_open() -> None:
    # Without --keys a daemon gets this user's keys (it cannot listen open on
    # any address); only --insecure runs it without (the API's daemons refuse
    # a non-loopback bind without keys: test_security_cluster).
    from lucidity.cli import _parser, _security
    from lucidity.cluster.security import default_keys_dir

    for kind in ("control", "node"):
        args = _parser().parse_args([kind, "--bind", "tcp://0.0.0.0:*"])
        keys = _security(args)["keys"]
        assert keys is not None and keys.path == default_keys_dir().resolve()
        args = _parser().parse_args([kind, "--bind", "tcp://127.0.0.1:*", "--insecure"])
        assert _security(args)["keys"] is None


def test_code_reaches_nodes_by_itself(rt_client: Any, tmp_path: Path) -> None:
    private = tmp_path / "shipped"
    (private / "lucidity_shipped").mkdir(parents=True)
    (private / "lucidity_shipped" / "__init__.py").write_text("")
    (private / "lucidity_shipped" / "mod.py").write_text(
        "def triple(x):\n    return 3 * x\n"
    )
    sys.path.insert(0, str(private))
    try:
        import lucidity_shipped.mod  # noqa: F401  (the caller has it; nodes do not)

        ref: _stubs.JobRef[int] = _stubs.JobRef("lucidity_shipped.mod:triple")
        assert _stubs.run_remote(ref, (5,)) == 15
    finally:
        sys.path.remove(str(private))
        for name in [n for n in sys.modules if n.startswith("lucidity_shipped")]:
            del sys.modules[name]
