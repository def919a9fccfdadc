"""What jobs print: it never blocks a worker or a node, and it reaches the
caller (prefixed with the job and where it ran) while the job runs; long
fanouts show a progress bar on a terminal; `lucidity status --watch`.

Real daemons: an embedded cluster started by a fresh interpreter (its
stdout and stderr read by the test), and CLI-started clusters through
conftest's `make_daemons`. The jobs are a tiny app written here
(`outapp`), called by reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

APP = "outapp"
RUN_S = 120.0  # a fresh interpreter, an embedded cluster, thousands of jobs

APP_SOURCE = '''
"""Jobs that print."""
import logging
import os
import sys
import time

from lucidity import _stubs

TALK = _stubs.JobRef("outapp.jobs:talk")


def chatty(i, size):
    print(f"chatty {i} " + "x" * size)
    return i


def talk(tag, pause):
    print(f"out {tag} one")
    print(f"err {tag} one", file=sys.stderr)
    time.sleep(pause)
    print(f"out {tag} two")
    os.write(1, f"fd1 {tag}\\n".encode())
    os.write(2, f"fd2 {tag}\\n".encode())
    logging.getLogger("outapp").warning("log %s", tag)
    return tag


def parent(tag):
    print(f"parent {tag} before")
    _stubs.run_remote(TALK, (f"child-{tag}", 0.0))
    print(f"parent {tag} after")
    return tag


def flood(i, lines, size):
    out = sys.stdout
    for n in range(lines):
        out.write(f"flood {i} {n} " + "y" * size + "\\n")
    return i


def same(i):
    print("the same line from every job")
    return i


def slow(i, seconds):
    time.sleep(seconds)
    return i
'''


def _clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in (
        "LUCIDITY_CONTROL",
        "LUCIDITY_NODE",
        "LUCIDITY_NODE_ID",
        "LUCIDITY_FORWARD_OUTPUT",
        "LUCIDITY_PROGRESS",
        "PYTHONPATH",
    ):
        env.pop(name, None)
    env["LUCIDITY_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def app_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("outapp")
    pkg = root / APP
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""The output tests\' app."""\n')
    (pkg / "jobs.py").write_text(APP_SOURCE)
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name == APP or name.startswith(APP + "."):
                del sys.modules[name]


def run_script(
    root: Path, body: str, timeout: float = RUN_S, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh interpreter (an embedded cluster of its own);
    its stdout and stderr, bounded by `timeout` (a hang fails the test, and
    the interpreter and its daemons are ended with it)."""
    script = "from lucidity import _stubs\n" + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=root,
        env=_clean_env(PYTHONPATH=str(root), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Its daemons watch its end of their stdin pipes: they go with it.
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(
            f"the script hung (killed after {timeout:.0f} s); stdout tail:\n"
            f"{out[-2000:]}\nstderr tail:\n{err[-2000:]}"
        )
    assert proc.returncode == 0, f"exit {proc.returncode}; stderr:\n{err[-4000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---- never block (issue 11, item 1) ------------------------------------------


@pytest.mark.parametrize("forward", ["1", "0"])
def test_printing_jobs_never_freeze_the_embedded_cluster(
    app_root: Path, forward: str
) -> None:
    # ~3,000 jobs of ~120 bytes each: several times the 64 KiB a pipe holds,
    # per node. Before the fix the workers inherited their node's stdout, a
    # pipe the embedded cluster reads only for the READY line, and hung.
    res = run_script(
        app_root,
        """
        CHATTY = _stubs.JobRef("outapp.jobs:chatty")
        for i in range(3000):
            assert _stubs.run_remote(CHATTY, (i, 100)) == i
        print("ALL DONE", flush=True)
        """,
        LUCIDITY_FORWARD_OUTPUT=forward,
    )
    assert "ALL DONE" in res.stdout
    shown = res.stdout if forward == "1" else res.stderr
    seen = sum(1 for line in shown.splitlines() if " chatty " in line)
    assert seen == 3000, f"{seen} of 3000 lines seen"


# ---- forwarding ---------------------------------------------------------------


def _lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def _check_talk(out: str, err: str, tag: str, job: Any = None) -> None:
    """`talk(tag)`'s lines, each prefixed with where it ran, in order."""
    outs = _lines_with(out, f" {tag}")
    errs = _lines_with(err, f" {tag}")
    assert [line.split(") ", 1)[1] for line in outs] == [
        f"out {tag} one",
        f"out {tag} two",
        f"fd1 {tag}",
    ], out
    assert [line.split(") ", 1)[1] for line in errs] == [
        f"err {tag} one",
        f"fd2 {tag}",
        f"log {tag}",
    ], err
    for line in outs + errs:
        assert line.startswith("(talk pid="), line
        if job is not None:
            assert line.startswith(f"(talk pid={job.pid} node={job.node}) "), line


def test_embedded_output_reaches_the_caller_while_the_job_runs(
    app_root: Path,
) -> None:
    res = run_script(
        app_root,
        """
        import sys
        TALK = _stubs.JobRef("outapp.jobs:talk")
        job = _stubs.submit_remote(TALK, ("emb", 2.0))
        assert job.result(60) == "emb"
        print("RESULT", job.node, job.pid, flush=True)
        assert _stubs.run_remote(TALK, ("sync", 0.0)) == "sync"
        print("AFTER SYNC", flush=True)
        """,
    )
    # A blocking call returns once its lines are written: they come before
    # what its caller prints next.
    lines = res.stdout.splitlines()
    after = lines.index("AFTER SYNC")
    assert [i for i, line in enumerate(lines) if " sync" in line][-1] < after
    _check_talk(res.stdout, res.stderr, "emb")
    lines = res.stdout.splitlines()
    result = next(i for i, line in enumerate(lines) if line.startswith("RESULT"))
    first = next(i for i, line in enumerate(lines) if "out emb one" in line)
    # Printed 2 s before the job ended: it is shown before its result.
    assert first < result, res.stdout
    _, node, pid = lines[result].split()
    assert lines[first].startswith(f"(talk pid={pid} node={node}) ")


@pytest.fixture
def cluster(app_root: Path, make_daemons: Any) -> Iterator[Any]:
    """A CLI-started control and two nodes (one worker each) on loopback TCP,
    this process connected to them."""
    import lucidity
    from lucidity.cluster.client import core as client

    daemons = make_daemons(app_root, _clean_env(PYTHONPATH=str(app_root)))
    ctl = daemons.control()
    for _ in range(2):
        daemons.node(ctl.endpoint)
    lucidity.connect(ctl.endpoint)
    client.get_client().wait_for_nodes(2, timeout=15)
    yield daemons
    lucidity.shutdown()
    client._address = None


def _printed() -> Any:
    from lucidity import printer

    return printer.printer()


def test_cli_cluster_output_reaches_the_caller_while_the_job_runs(
    cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from waits import wait_until

    from lucidity import _stubs

    job = _stubs.submit_remote(_stubs.JobRef("outapp.jobs:talk"), ("cli", 3.0))
    seen = {"out": "", "err": ""}

    def arrived() -> bool:
        got = capsys.readouterr()
        seen["out"] += got.out
        seen["err"] += got.err
        return "out cli one" in seen["out"] and "err cli one" in seen["err"]

    wait_until(arrived, 20, "the job's first lines")
    assert not job.done(), "the lines came only with the result"
    assert job.result(30) == "cli"
    _printed().flush()
    got = capsys.readouterr()
    _check_talk(seen["out"] + got.out, seen["err"] + got.err, "cli", job)
    assert job.node in {n["id"] for n in _nodes()}


def _nodes() -> list[dict[str, Any]]:
    from lucidity.cluster.client import get_client

    return get_client().nodes()


def test_nested_output_reaches_the_top_caller(
    cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from lucidity import _stubs

    assert _stubs.run_remote(_stubs.JobRef("outapp.jobs:parent"), ("n1",)) == "n1"
    _printed().flush()
    out = capsys.readouterr().out
    parent = _lines_with(out, "parent n1")
    child = _lines_with(out, "out child-n1")
    assert [line.split(") ", 1)[1] for line in parent] == [
        "parent n1 before",
        "parent n1 after",
    ], out
    assert all(line.startswith("(parent pid=") for line in parent), out
    # The child's lines, shown where the child ran, between its parent's.
    assert len(child) == 2 and all(ln.startswith("(talk pid=") for ln in child), out
    lines = out.splitlines()
    assert (
        lines.index(parent[0])
        < lines.index(child[0])
        < lines.index(child[1])
        < lines.index(parent[1])
    ), out


def test_forwarding_off_keeps_output_in_the_nodes_log(
    app_root: Path, make_daemons: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import lucidity
    from lucidity import _stubs
    from lucidity.cluster.client import core as client

    daemons = make_daemons(app_root, _clean_env(PYTHONPATH=str(app_root)))
    ctl = daemons.control()
    node = daemons.node(ctl.endpoint)
    os.environ["LUCIDITY_FORWARD_OUTPUT"] = "0"
    try:
        lucidity.connect(ctl.endpoint)
        assert _stubs.run_remote(_stubs.JobRef("outapp.jobs:talk"), ("q", 0)) == "q"
        _printed().flush()
    finally:
        del os.environ["LUCIDITY_FORWARD_OUTPUT"]
        lucidity.shutdown()
        client._address = None
    got = capsys.readouterr()
    assert " q" not in got.out and "err q" not in got.err, got

    from waits import wait_until

    wait_until(lambda: "fd2 q" in node.log_text(), 10, "the lines in the node's log")
    log = node.log_text()
    for text in ("out q one", "out q two", "fd1 q", "err q one", "fd2 q", "log q"):
        assert f") {text}" in log, log


def test_repeated_lines_of_many_jobs_are_collapsed(app_root: Path) -> None:
    res = run_script(
        app_root,
        """
        SAME = _stubs.JobRef("outapp.jobs:same")
        assert _stubs.fanout(SAME, [(i,) for i in range(40)]) == list(range(40))
        """,
    )
    plain = [
        line
        for line in res.stdout.splitlines()
        if line.endswith(") the same line from every job")
    ]
    repeated = _lines_with(res.stdout, "the same line from every job [repeated ")
    # Once per worker that ran it first (a window per line), then a count.
    assert 1 <= len(plain) < 40, res.stdout
    assert repeated, res.stdout
    counts = sum(
        int(line.rsplit("[repeated ", 1)[1].split("x")[0]) for line in repeated
    )
    assert len(plain) + counts == 40, res.stdout


def test_an_output_flood_neither_blocks_nor_loses_the_cluster(app_root: Path) -> None:
    # 3,000 jobs writing 40 lines of ~200 bytes each (24 MB), to a caller
    # whose stdout takes a millisecond per write: most lines cannot be shown.
    res = run_script(
        app_root,
        """
        import sys, time

        class Slow:
            def __init__(self, inner):
                self.inner = inner
            def write(self, text):
                time.sleep(0.001)
                return self.inner.write(text)
            def flush(self):
                self.inner.flush()

        real = sys.stdout
        sys.stdout = Slow(real)
        FLOOD = _stubs.JobRef("outapp.jobs:flood")
        started = time.monotonic()
        items = [(i, 40, 200) for i in range(3000)]
        assert _stubs.fanout(FLOOD, items) == list(range(3000))
        CHATTY = _stubs.JobRef("outapp.jobs:chatty")
        t = time.monotonic()
        assert _stubs.run_remote(CHATTY, (1, 10)) == 1
        real.write(f"AFTER {time.monotonic() - t:.3f}\\n")
        real.write(f"FANOUT {t - started:.1f}\\n")
        real.flush()
        """,
    )
    after = float(_lines_with(res.stdout, "AFTER ")[0].split()[1])
    assert after < 5.0, res.stdout[-500:]  # the cluster still answers at once
    dropped = _lines_with(res.stderr, "line(s) of job output dropped")
    assert dropped, res.stderr[-2000:]
    told = sum(int(line.split(") ", 1)[1].split()[0]) for line in dropped)
    shown = len(
        _lines_with(res.stdout, ") flood ") + _lines_with(res.stdout, ") chatty ")
    )
    # Every line (the flood's, and the last job's one) is either shown or
    # counted as dropped: none is lost silently.
    assert shown + told == 3000 * 40 + 1, (shown, told, dropped)


# ---- progress -----------------------------------------------------------------


def _read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side of the pty is closed
            return
        if not chunk:
            return
        into.append(chunk)


def run_on_pty(root: Path, body: str, **env: str) -> tuple[str, str]:
    """Run `body` (an embedded cluster of its own) with its stderr on a
    pseudo-terminal: (its stdout, what it drew on the terminal)."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    # A terminal of 100 columns, as a real one says.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    got: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, got), daemon=True)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from lucidity import _stubs\n" + body],
            cwd=root,
            env=_clean_env(PYTHONPATH=str(root), **env),
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        os.close(slave)
        slave = -1
        reader.start()
        try:
            out, _ = proc.communicate(timeout=RUN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)
            pytest.fail(f"the script hung (killed after {RUN_S:.0f} s)")
        reader.join(timeout=10)
        assert proc.returncode == 0, b"".join(got).decode(errors="replace")[-3000:]
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return out, b"".join(got).decode(errors="replace")


SLOW_FANOUT = """
SLOW = _stubs.JobRef("outapp.jobs:slow")
assert _stubs.fanout(SLOW, [(i, 0.1) for i in range(40)]) == list(range(40))
print("FANOUT DONE", flush=True)
"""

QUICK_FANOUT = """
SLOW = _stubs.JobRef("outapp.jobs:slow")
assert _stubs.fanout(SLOW, [(i, 0.0) for i in range(40)]) == list(range(40))
print("FANOUT DONE", flush=True)
"""


def test_a_long_fanout_draws_a_progress_bar_on_a_terminal(app_root: Path) -> None:
    out, tty = run_on_pty(app_root, SLOW_FANOUT)
    assert "FANOUT DONE" in out
    # tqdm's bar: the job, items done of the total, the rate.
    assert "slow: " in tty and "40/40" in tty and "item/s" in tty, tty
    assert "\r" in tty, tty  # redrawn in place


def test_a_short_fanout_draws_no_bar(app_root: Path) -> None:
    out, tty = run_on_pty(app_root, QUICK_FANOUT)
    assert "FANOUT DONE" in out
    assert "item/s" not in tty and "40/40" not in tty, tty


def test_no_progress_bar_without_a_terminal_unless_forced(app_root: Path) -> None:
    plain = run_script(app_root, SLOW_FANOUT)
    assert "FANOUT DONE" in plain.stdout
    assert "item/s" not in plain.stderr, plain.stderr
    forced = run_script(app_root, SLOW_FANOUT, LUCIDITY_PROGRESS="1")
    assert "40/40" in forced.stderr and "item/s" in forced.stderr, forced.stderr
    out, tty = run_on_pty(app_root, SLOW_FANOUT, LUCIDITY_PROGRESS="0")
    assert "FANOUT DONE" in out and "item/s" not in tty, tty


# ---- status --watch -----------------------------------------------------------


def _watch_argv(control: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lucidity",
        "status",
        "--control",
        control,
        "--watch",
        "--interval-ms",
        "300",
        *extra,
    ]


def test_status_watch_refreshes_in_place_on_a_terminal(
    cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import pty
    import threading

    from waits import in_thread

    from lucidity import _stubs
    from lucidity.cluster.client import get_client

    control = get_client().control
    assert control is not None
    ids = {n["id"] for n in _nodes()}
    slow = _stubs.JobRef("outapp.jobs:slow")
    # Jobs finishing all along, for the jobs/s column.
    busy = in_thread(lambda: _stubs.fanout(slow, [(i, 0.02) for i in range(200)]))
    master, slave = pty.openpty()
    got: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, got), daemon=True)
    try:
        proc = subprocess.Popen(
            _watch_argv(control, "--count", "10"),
            stdout=slave,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=_clean_env(),
        )
        os.close(slave)
        slave = -1
        reader.start()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            pytest.fail("status --watch --count 10 did not end")
        reader.join(timeout=10)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert busy.result(60) == list(range(200))
    assert proc.returncode == 0, err
    tty = b"".join(got).decode(errors="replace")
    frames = [f for f in tty.split("\x1b[H\x1b[2J") if f.strip()]
    assert len(frames) == 10, tty  # each refresh redraws the screen
    for frame in frames:
        assert "JOBS/S" in frame and "MEMORY" in frame, frame
        assert all(node in frame for node in ids), frame
        assert "2 node(s)" in frame, frame
    rates = [
        float(line.split(", ")[-1].split()[0])
        for f in frames
        for line in f.splitlines()
        if "jobs/s" in line
    ]
    assert max(rates) > 0, tty  # the jobs finishing meanwhile were counted
    capsys.readouterr()


def test_status_watch_prints_plain_lines_without_a_terminal(cluster: Any) -> None:
    from lucidity.cluster.client import get_client

    control = get_client().control
    assert control is not None
    res = subprocess.run(
        _watch_argv(control, "--count", "2"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
    )
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout
    assert res.stdout.count("NODE  ") == 2 and res.stdout.count("2 node(s)") == 2
    for node in _nodes():
        assert node["id"] in res.stdout


# ---- a node's side, isolated --------------------------------------------------


def test_a_node_drops_and_counts_what_a_full_client_queue_refuses() -> None:
    """`NodeOutput` against a real ROUTER whose peer reads nothing: sends
    the peer's queue refuses are counted, and the next OUTPUT says how many."""
    import zmq

    from lucidity.cluster.node.output import NodeOutput
    from lucidity.cluster.wire import protocol as p
    from lucidity.cluster.wire._loop import EventLoop

    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    front.setsockopt(zmq.ROUTER_MANDATORY, 1)
    front.sndhwm = 4
    front.bind("inproc://out-drops")
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, b"c1")
    peer.rcvhwm = 4
    peer.connect("inproc://out-drops")
    try:
        out = NodeOutput(EventLoop(), front, "n0")
        out.enabled = True
        at = ((b"c1", 7, "app.mod:talk", True), 4242)
        for n in range(100):
            out._emit(at, False, [f"line {n}".encode()])
        assert out.dropped[b"c1"] > 0
        dropped = out.dropped[b"c1"]
        got: list[list[bytes]] = []
        while peer.poll(100):
            got.append(peer.recv_multipart())
        assert len(got) + dropped == 100
        out._emit(at, True, [b"after"])
        msg = p.decode(peer.recv_multipart()[0])
        assert msg.type == p.MsgType.OUTPUT
        assert msg.header == {
            "id": 7,
            "job": "talk",
            "pid": 4242,
            "node": "n0",
            "err": 1,
            "dropped": dropped,
        }
        assert b"c1" not in out.dropped
        out.close()
    finally:
        peer.close(0)
        front.close(0)
        ctx.term()


def test_a_jobs_last_dropped_lines_are_told_with_its_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When the lines a node had to drop were a job's last (no OUTPUT comes
    after them), its RESULT says how many, and the caller prints the count."""
    import zmq

    from lucidity.cluster.client.results import _Results
    from lucidity.cluster.node.front import ClientFront
    from lucidity.cluster.node.output import NodeOutput
    from lucidity.cluster.node.scheduler import Task
    from lucidity.cluster.security.guard import Guard
    from lucidity.cluster.wire import protocol as p
    from lucidity.cluster.wire._loop import EventLoop

    def nothing(*args: Any) -> None:
        return None

    ctx = zmq.Context()
    loop = EventLoop()
    front = ClientFront(
        ctx,
        Guard(ctx, None),
        "tcp://127.0.0.1:*",
        loop,
        "n0",
        nothing,
        nothing,
        nothing,
        nothing,
        nothing,
    )
    front.sock.sndhwm = 2
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, b"c1")
    peer.rcvhwm = 2
    peer.connect(front.endpoint)
    try:
        out = NodeOutput(loop, front.sock, "n0")
        front.untold = out.untold
        out.enabled = True
        peer.send(p.encode(p.MsgType.PING, {}))  # connected: sends reach it
        assert front.sock.poll(5000)
        front.sock.recv_multipart()
        at = ((b"c1", 7, "app.mod:talk", True), 4242)
        # Over TCP the kernel's buffers take some first: until one is refused.
        sent = 0
        while b"c1" not in out.dropped and sent < 100_000:
            out._emit(at, False, [b"x" * 10_000])
            sent += 1
        dropped = out.dropped[b"c1"]
        assert dropped > 0
        while peer.poll(500):  # the lines the queue took (not what is tested)
            assert p.decode(peer.recv_multipart()[0]).type == p.MsgType.OUTPUT
        front.client_seen[b"c1"] = 0.0
        front.reply(Task(b"c1", 7, {"target": "app.mod:talk"}, []), True, [b"r"])
        assert b"c1" not in out.dropped  # told once, by the result
        reader = _Results.__new__(_Results)
        assert peer.poll(5000)
        frames = peer.recv_multipart(copy=False)
        results = [reader._node_message(peer, frames, "tcp://127.0.0.1:1")]
        assert results[0] is not None
        assert results and results[0][0] == 7
        assert results[0][1]["dropped"] == dropped
        from lucidity import printer

        printer.printer().flush(5)
        err = capsys.readouterr().err
        assert f"{dropped} line(s) of job output dropped" in err, err
        out.close()
    finally:
        peer.close(0)
        front.sock.close(0)
        ctx.term()


def test_an_output_flood_over_the_wire_loses_no_line_silently(
    cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from lucidity import _stubs

    # 1,000 jobs of 40 lines of ~200 bytes (8 MB) from CLI-started nodes.
    items = [(i, 40, 200) for i in range(1000)]
    assert _stubs.fanout(_stubs.JobRef("outapp.jobs:flood"), items) == list(range(1000))
    started = time.monotonic()
    assert _stubs.run_remote(_stubs.JobRef("outapp.jobs:slow"), (1, 0.0)) == 1
    assert time.monotonic() - started < 5.0  # the cluster answers at once
    _printed().flush(30)
    got = capsys.readouterr()
    shown = len(_lines_with(got.out, ") flood "))
    told = sum(
        int(line.split(") ", 1)[1].split()[0])
        for line in _lines_with(got.err, "line(s) of job output dropped")
    )
    assert shown + told == 1000 * 40, (shown, told)
