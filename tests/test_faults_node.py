"""Node-side faults (issue 11), each against real daemons.

A SUBMIT whose header has a field of the wrong type or range is dropped
before it takes anything (a slot, a queue place); cancelling a job never
kills the next, unrelated job of its worker; a worker that dies at import is
started again with a growing delay, not in a crash loop; control drops
expired subscriptions on its own schedule; the bundle cache is private
(0700/0600), written without following a planted symlink, and bounded; the
embedded cluster's socket folder does not outlive a SIGKILLed app or a fork
child that `os._exit`s.

The tests speak the wire protocol to a node with a plain DEALER socket, so
each message is exactly the one under test. Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from waits import wait_until

from lucidity.cluster.node import bundles as bundle_mod
from lucidity.cluster.security import default_keys, secure_client
from lucidity.cluster.wire import protocol as p
from lucidity.errors import ClusterError

APP = '''
"""Jobs of the node fault tests."""

import os
import signal
import time
from pathlib import Path


def square(x):
    return x * x


def record(path, value):
    with open(path, "a") as f:
        f.write(f"{value}\\n")
    return value


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def ends_on_term(pid_path):
    """Finish cleanly (and at once) when SIGTERM comes: a job that honours
    its cancellation's grace period."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    Path(pid_path).write_text(str(os.getpid()))
    deadline = time.monotonic() + 30
    while not stop and time.monotonic() < deadline:
        time.sleep(0.01)
    return "cancelled cleanly"
'''

# Imported by every Python process started with the app's folder on its path;
# only a node's workers have LUCIDITY_NODE_ID. While FLAG exists they die at
# start, before READY (a worker that cannot import: a crash loop).
SITECUSTOMIZE = """
import os
_flag = {flag!r}
if os.environ.get("LUCIDITY_NODE_ID") and os.path.exists(_flag):
    with open({log!r}, "a") as _f:
        _f.write(f"{{os.getpid()}}\\n")
    os._exit(3)
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "faultapp.py").write_text(APP)
    return root


def _env(app_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("LUCIDITY_CONTROL", "LUCIDITY_NODE", "LUCIDITY_NODE_ID"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(app_dir)
    env.update(extra)
    return env


@pytest.fixture
def daemons(app_dir: Path, make_daemons: Any) -> Any:
    return make_daemons(app_dir, _env(app_dir))


def standalone_node(daemons: Any, *args: str, workers: int = 1) -> Any:
    return daemons.start(
        "node",
        "--standalone",
        "--bind",
        "tcp://127.0.0.1:*",
        "--workers",
        str(workers),
        *args,
    )


class Peer:
    """A hand-driven client: one DEALER socket to one node."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        # An authorised member (this user's keys, as the daemons'): a
        # stranger would be refused at the handshake, before any frame.
        secure_client(self.sock, default_keys())
        self.sock.connect(endpoint)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def send(
        self, msg_type: p.MsgType, header: dict[str, Any], *payload: bytes
    ) -> None:
        self.sock.send_multipart([p.encode(msg_type, header), *payload])

    def submit(self, job_id: int, target: str, *args: Any, **extra: Any) -> None:
        payload = p.dumps_payload(args)
        self.send(p.MsgType.SUBMIT, {"id": job_id, "target": target, **extra}, *payload)

    def recv(self, timeout: float) -> tuple[p.Message, list[bytes]]:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"nothing from the node within {timeout} s")
        frames = self.sock.recv_multipart()
        return p.decode(frames[0]), frames[1:]

    def result(self, job_id: int, timeout: float) -> tuple[bool, Any]:
        """The RESULT of `job_id` (others are skipped): (ok, value or error text)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no RESULT for job {job_id} within {timeout} s")
            msg, payload = self.recv(left)
            if msg.type != p.MsgType.RESULT or msg.header.get("id") != job_id:
                continue
            value = p.loads_payload(payload)
            if msg.header["ok"]:
                return True, value
            return False, value[2]  # (blob, type name, text, traceback)


@pytest.fixture
def peer_of() -> Iterator[Any]:
    made: list[Peer] = []

    def make(endpoint: str) -> Peer:
        made.append(Peer(endpoint))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


# ---- item 5: a SUBMIT with a wrong-typed field ------------------------------------

BAD_FIELDS: list[dict[str, Any]] = [
    {"memory": "x"},
    {"memory": [1]},
    {"memory": True},
    {"memory": -5},
    {"fuel": "x"},
    {"fuel": 1.5},
    {"fuel": 0},
    {"depth": "1"},
    {"depth": -1},
    {"set_ms": "x"},
    {"set_ms": 0},
    {"shm": "yes"},
    {"batch": 5},
    {"batch": "pairs"},
    {"bundle": 5},
    {"id": True},
    {"id": 1.5},
    {"id": -3},
]


def test_submit_with_wrong_typed_field_is_dropped_whole(
    daemons: Any, peer_of: Any, tmp_path: Path
) -> None:
    node = standalone_node(daemons)
    peer = peer_of(node.endpoint)
    ran = tmp_path / "ran"
    for n, bad in enumerate(BAD_FIELDS):
        peer.submit(100 + n, "faultapp:record", str(ran), f"bad{n}", **bad)
        # The one slot must still be free: a good job right after runs.
        peer.submit(n, "faultapp:square", n)
        assert peer.result(n, 15) == (True, n * n), f"after {bad}"
    assert not ran.exists(), ran.read_text()  # no malformed job ran
    log = node.log_text()
    assert log.count("dropped a malformed SUBMIT") == len(BAD_FIELDS), log
    assert node.proc.poll() is None


json_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text()


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["id", "target", "bundle", "depth", "memory", "fuel", "set_ms", "shm"]
            + ["batch", "other"]
        ),
        json_values | st.lists(json_values, max_size=2),
        max_size=10,
    )
)
def test_check_submit_passes_only_well_typed_headers(header: dict[str, Any]) -> None:
    try:
        p.check_submit(header)
    except p.FrameError:
        return
    assert type(header["id"]) is int and header["id"] >= 0
    assert isinstance(header["target"], str) and ":" in header["target"]
    for name in ("memory", "fuel", "set_ms"):
        assert header.get(name) is None or (
            type(header[name]) is int and header[name] > 0
        )
    assert header.get("batch") in (None, "tuples", "single")
    assert type(header.get("depth", 0)) is int
    assert header.get("shm") in (None, 0, 1, True, False)


# ---- item 6: a cancelled job's worker takes no new job ----------------------------


def test_cancel_grace_kill_does_not_hit_the_next_job(
    daemons: Any, peer_of: Any, tmp_path: Path
) -> None:
    """A job that ends cleanly on SIGTERM: its worker used to take the next
    job, which the grace period's SIGKILL then killed."""
    node = standalone_node(daemons)
    peer = peer_of(node.endpoint)
    pid_path = tmp_path / "pid"
    peer.submit(1, "faultapp:ends_on_term", str(pid_path))
    wait_until(pid_path.exists, 15, "the first job to start")
    first = int(pid_path.read_text())
    peer.send(p.MsgType.CANCEL, {"id": 1, "grace_ms": 1500})
    peer.submit(2, "faultapp:pid_after", 3.0)
    ok, value = peer.result(2, 20)
    assert ok, value
    assert value != first  # a fresh worker, not the one being stopped
    assert node.proc.poll() is None


def test_cancel_racing_done_does_not_kill_the_next_job(
    daemons: Any, peer_of: Any, tmp_path: Path
) -> None:
    """CANCEL reaching the node after the job's DONE is in the link, with the
    next job right behind it: the SIGTERM must not land on that next job."""
    node = standalone_node(daemons)
    peer = peer_of(node.endpoint)
    lost = 0
    for round_no in range(3):
        a, b = 10 * round_no + 1, 10 * round_no + 2
        peer.submit(a, "faultapp:pid_after", 0.3)
        wait_until(node.workers, 10, "a worker")
        time.sleep(0.1)  # the job has started
        os.kill(node.pid, signal.SIGSTOP)
        try:
            time.sleep(0.6)  # the job ends; its DONE waits in the link
            peer.send(p.MsgType.CANCEL, {"id": a, "grace_ms": 5000})
            peer.submit(b, "faultapp:pid_after", 0.5)
            time.sleep(0.2)
        finally:
            os.kill(node.pid, signal.SIGCONT)
        ok, value = peer.result(b, 20)
        lost += not ok
        assert ok, f"round {round_no}: {value}"
    assert lost == 0
    assert node.proc.poll() is None


# ---- item 14: a worker that dies at import ------------------------------------


def test_worker_dying_at_import_is_restarted_with_backoff(
    app_dir: Path, make_daemons: Any, peer_of: Any, tmp_path: Path
) -> None:
    flag, starts = tmp_path / "crash", tmp_path / "starts"
    flag.touch()
    (app_dir / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(flag=str(flag), log=str(starts))
    )
    daemons = make_daemons(app_dir, _env(app_dir))
    node = standalone_node(daemons)
    peer = peer_of(node.endpoint)
    window = 4.0
    time.sleep(window)
    count = len(starts.read_text().split())
    # At once: a start every ~30-100 ms (dozens). With backoff: a handful.
    assert 2 <= count <= 10, f"{count} worker starts in {window} s"
    peer.send(p.MsgType.PING, {})
    assert peer.recv(5)[0].type == p.MsgType.PONG
    flag.unlink()
    peer.submit(1, "faultapp:square", 7)
    assert peer.result(1, 20) == (True, 49)
    assert "before it was ready" in node.log_text()


# ---- item 14: control prunes expired subscriptions on its own -------------------


def test_control_prunes_expired_subscriptions_without_membership_change(
    daemons: Any,
) -> None:
    argv = [sys.executable, "-m", "lucidity", "--log-level", "INFO", "control"]
    ctl = daemons.spawn(
        "control", [*argv, "--bind", "tcp://127.0.0.1:*", "--parent-pipe"]
    )
    ctx = zmq.Context()
    try:
        for _ in range(20):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            try:
                # An authorised member (this user's keys, as the daemon's).
                secure_client(sock, default_keys())
                sock.connect(ctl.endpoint)
                sock.send(p.encode(p.MsgType.SUBSCRIBE, {}))
                assert sock.poll(5000), "no NODES from control"
            finally:
                sock.close(0)
    finally:
        ctx.term()
    # Leases last 5 s; nothing joins or leaves, yet they must all go.
    dropped = re.compile(r"dropped (\d+) expired subscriptions \((\d+) left\)")

    def all_dropped() -> bool:
        found = dropped.findall(ctl.log_text())
        return bool(found) and found[-1][1] == "0"

    wait_until(all_dropped, 15, "control to drop the 20 expired subscriptions")
    assert sum(int(n) for n, _ in dropped.findall(ctl.log_text())) == 20


# ---- items 14 and 16: the bundle cache ---------------------------------------


def _zip_of(name: str, source: str, pad: int = 0) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{name}.py", source)
        if pad:
            zf.writestr("pad.bin", os.urandom(pad))
    return buf.getvalue()


def test_bundle_through_node_is_private_and_written_without_following_symlinks(
    daemons: Any, peer_of: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    node = standalone_node(daemons, "--cache", str(cache))
    data = _zip_of("shippedmod", "def answer():\n    return 42\n")
    digest = hashlib.sha256(data).hexdigest()
    # A planted symlink under the temp name the node used to write through.
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, cache / f"{digest}.{node.pid}.tmp")
    peer = peer_of(node.endpoint)
    peer.submit(1, "shippedmod:answer", bundle=digest)
    msg, _ = peer.recv(10)
    assert msg.type == p.MsgType.FETCH and msg.header["bundle"] == digest
    peer.send(p.MsgType.BUNDLE, {"bundle": digest}, data)
    assert peer.result(1, 20) == (True, 42)
    assert victim.read_bytes() == b"precious"
    cached = cache / f"{digest}.zip"
    st_file = os.lstat(cached)
    assert stat.S_ISREG(st_file.st_mode)
    assert stat.S_IMODE(st_file.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    # No temp file left beside it (but the planted link, untouched).
    assert sorted(os.listdir(cache)) == sorted(
        [f"{digest}.zip", f"{digest}.{node.pid}.tmp"]
    )


def test_bundle_cache_modes_and_safe_write(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cache = bundle_mod.BundleCache(tmp_path / "c", max_bytes=1 << 30)
        data = _zip_of("m", "x = 1\n")
        digest = hashlib.sha256(data).hexdigest()
        cache.put(digest, data)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.path(digest)).st_mode) == 0o600
    assert cache.has(digest)
    assert sorted(os.listdir(tmp_path / "c")) == [f"{digest}.zip"]
    # A symlink planted as the bundle itself is replaced, not written through.
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    other = _zip_of("n", "y = 2\n")
    other_digest = hashlib.sha256(other).hexdigest()
    os.symlink(victim, cache.path(other_digest))
    assert not cache.has(other_digest)
    cache.put(other_digest, other)
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(cache.path(other_digest))


def test_bundle_cache_evicts_least_recently_used_within_its_bound(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "c"
    bound = 350_000  # three bundles of ~100 KB, not four
    earlier = bundle_mod.BundleCache(folder, max_bytes=bound)
    blobs = [_zip_of(f"m{n}", "x = 1\n", pad=100_000) for n in range(5)]
    d = [hashlib.sha256(b).hexdigest() for b in blobs]
    for n in range(3):
        earlier.put(d[n], blobs[n])
        # An earlier node run's order of use is its files' mtimes.
        os.utime(earlier.path(d[n]), (1_000_000 + n, 1_000_000 + n))

    def left() -> set[str]:
        return {x for x in d if os.path.exists(folder / f"{x}.zip")}

    def size() -> int:
        return sum(os.path.getsize(folder / f"{x}.zip") for x in left())

    cache = bundle_mod.BundleCache(folder, max_bytes=bound)  # a later run
    assert cache.has(d[0])  # used in this run: now the most recent of the three
    cache.put(d[3], blobs[3], keep={d[1]})  # d[1]: a worker imports from it
    assert left() == {d[0], d[1], d[3]} and size() <= bound  # d[2] was oldest
    assert not cache.has(d[2])
    cache.put(d[4], blobs[4])
    assert left() == {d[0], d[3], d[4]} and size() <= bound  # then d[1]


# ---- item 13: the embedded cluster's socket folder ------------------------------

EMBEDDED_APP = """
import os, sys, time
from lucidity import _stubs
from lucidity.cluster.client import core as client

def folder():
    assert _stubs.run_remote(_stubs.JobRef("faultapp:square"), (3,)) == 9
    return client._cluster.folder

mode = sys.argv[1]
if mode == "hold":
    print(folder(), flush=True)
    time.sleep(120)
elif mode == "fork":
    pid = os.fork()
    if pid == 0:
        print(folder(), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    print(folder(), flush=True)
"""


def test_embedded_socket_folders_do_not_outlive_their_app(
    app_dir: Path, tmp_path: Path, procs: Any
) -> None:
    script = app_dir / "embedded_app.py"
    script.write_text(textwrap.dedent(EMBEDDED_APP))
    env = _env(app_dir)
    hold = subprocess.Popen(
        [sys.executable, str(script), "hold"],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    tree: list[int] = []
    try:
        assert hold.stdout is not None
        killed = hold.stdout.readline().strip()
        assert killed.startswith("/tmp/lucidity-"), killed
        assert os.path.isdir(killed)
        tree = procs.descendants(hold.pid)
        hold.send_signal(signal.SIGKILL)
        hold.wait(10)
        assert not procs.wait_gone(tree, 10), "the app's daemons outlived it"
        assert os.path.isdir(killed)  # nothing removed it at the kill
        forked = subprocess.run(
            [sys.executable, str(script), "fork"],
            cwd=app_dir,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=90,
        )
        assert forked.returncode == 0
        child, parent = forked.stdout.split()
        assert child != parent
        # The killed app's folder is swept when the fork child starts its
        # cluster; the child's (it os._exit-ed) when the parent starts one.
        left = [f for f in (killed, child, parent) if os.path.exists(f)]
        assert not left, left
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait(10)
        procs.kill_pids(procs.wait_gone(tree, 5))


def test_bundle_cache_refuses_a_folder_of_another_user(tmp_path: Path) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user (chown)")
    os.chown(folder, 65534, 65534)
    with pytest.raises(ClusterError, match=r"belongs to uid 65534, not to this user"):
        bundle_mod.BundleCache(folder)
