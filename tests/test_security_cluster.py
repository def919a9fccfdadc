"""Security with real daemons: `lucidity control` and `lucidity node` processes
on loopback, CURVE keys, refused strangers, revoked members, hostile frames."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from lucidity import protocol as p
from lucidity._options import validate_options
from lucidity.client import Client
from lucidity.errors import AuthenticationError
from lucidity.security import Keys, add_member, keygen, load_keys, secure_client

TARGET = "secapp.jobs:square"
OPTIONS = validate_options({})
WAIT_S = 10.0
MAX_MB = 1


def port(daemon: Any) -> int:
    return int(daemon.endpoint.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("app")
    pkg = root / "secapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs.py").write_text("def square(a):\n    return a * a\n")
    return root


@pytest.fixture(scope="module")
def spawn(app_dir: Path, make_module_daemons: Any) -> Any:
    """`spawn(KIND, ARGS...)`: a daemon run from the app's folder, without
    the environment's cluster settings; stopped with the module."""
    env = dict(os.environ)
    for name in ("LUCIDITY_KEYS", "LUCIDITY_CONTROL", "LUCIDITY_NODE"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(app_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    daemons = make_module_daemons(app_dir, env)
    return lambda kind, *args: daemons.start(kind, *args)


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keygen(tmp_path_factory.mktemp("sec") / "keys")


@pytest.fixture(scope="module")
def cluster(spawn: Any, keys_dir: Path) -> tuple[Any, Any]:
    secure = ["--keys", str(keys_dir), "--max-message-mb", str(MAX_MB)]
    control = spawn("control", "--bind", "tcp://127.0.0.1:*", *secure)
    node = spawn(
        "node",
        "--control",
        control.endpoint,
        "--bind",
        "tcp://127.0.0.1:*",
        "--workers",
        "1",
        "--heartbeat-ms",
        "200",
        *secure,
    )
    return control, node


@pytest.fixture
def client_for(cluster: tuple[Any, Any]) -> Iterator[Any]:
    clients: list[Client] = []

    def make(keys: Keys | None) -> Client:
        c = Client(cluster[0].endpoint, keys=keys)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def _square(client: Client, value: int, addr: str | None = None) -> Any:
    return client.submit(TARGET, OPTIONS, (value,), addr=addr).await_get(WAIT_S)


def _assert_serving(cluster: tuple[Any, Any], keys_dir: Path) -> None:
    control, node = cluster
    assert control.proc.poll() is None and node.proc.poll() is None
    client = Client(control.endpoint, keys=load_keys(keys_dir))
    try:
        client.wait_for_nodes(1, WAIT_S)
        assert _square(client, 9) == 81
    finally:
        client.close()


def _refused(client: Client, addr: str | None = None) -> AuthenticationError:
    start = time.monotonic()
    with pytest.raises(AuthenticationError) as info:
        _square(client, 3, addr)
    assert time.monotonic() - start < 5
    return info.value


# ---- members in and out --------------------------------------------------


def test_keyed_cluster_runs_jobs(client_for: Any, keys_dir: Path) -> None:
    client = client_for(load_keys(keys_dir))
    client.wait_for_nodes(1, WAIT_S)
    assert _square(client, 7) == 49


def test_no_keys_is_refused_with_a_clear_error(
    client_for: Any, cluster: tuple[Any, Any]
) -> None:
    error = _refused(client_for(None))
    assert "requires keys" in str(error) and "LUCIDITY_KEYS" in str(error)
    # Straight at the node, bypassing control: refused the same way.
    error = _refused(client_for(None), addr=cluster[1].endpoint)
    assert "requires keys" in str(error)


def test_another_clusters_keys_are_refused(client_for: Any, tmp_path: Path) -> None:
    stranger = load_keys(keygen(tmp_path / "other"))
    error = _refused(client_for(stranger))
    assert "are not this cluster's" in str(error)


def test_a_foreign_member_key_with_the_right_server_key_is_refused(
    client_for: Any, keys_dir: Path, tmp_path: Path, cluster: tuple[Any, Any]
) -> None:
    # Knows the cluster's public server key, but its own key is not authorised.
    folder = tmp_path / "intruder"
    keygen(folder)
    shutil.copyfile(keys_dir / "server.key", folder / "server.key")
    error = _refused(client_for(load_keys(folder)), addr=cluster[1].endpoint)
    assert "refused this member's key" in str(error)


def test_add_then_revoke_a_member(
    client_for: Any, keys_dir: Path, cluster: tuple[Any, Any]
) -> None:
    bob = load_keys(add_member(keys_dir, "bob"))
    client = client_for(bob)
    client.wait_for_nodes(1, WAIT_S)
    assert _square(client, 5) == 25

    (keys_dir / "authorized" / "bob.key").unlink()
    # Already connected: its next job is answered with a refusal, not silence.
    with pytest.raises(AuthenticationError, match="no longer authorised"):
        _square(client, 6)
    # A new connection is refused at the handshake.
    error = _refused(client_for(bob), addr=cluster[1].endpoint)
    assert "refused this member's key" in str(error)
    _assert_serving(cluster, keys_dir)


# ---- hostile input -------------------------------------------------------


def _raw_dealer(ctx: zmq.Context[Any], keys: Keys, endpoint: str) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.linger = 0
    secure_client(sock, keys)
    sock.connect(endpoint)
    return sock


def test_garbage_and_malformed_frames_are_dropped(
    cluster: tuple[Any, Any], keys_dir: Path
) -> None:
    # Not even ZeroMQ: raw bytes at both ports.
    for daemon in cluster:
        for junk in (os.urandom(4096), b"\xff" + b"\0" * 8 + b"\x7f" + os.urandom(64)):
            with socket.create_connection(("127.0.0.1", port(daemon)), timeout=5) as s:
                try:
                    s.sendall(junk)
                    s.recv(64)  # the daemon answers its greeting or hangs up
                except OSError:
                    pass  # reset by the daemon: what it should do
    # An authorised member sending nonsense over a real connection.
    bad: list[list[bytes]] = [
        [b""],
        [b"garbage"],
        [b"XX\x01\x0a{}"],  # bad magic
        [p.MAGIC + bytes((99, 10)) + b"{}"],  # another version
        [p.MAGIC + bytes((1, 200)) + b"{}"],  # unknown type
        [p.MAGIC + bytes((1, 10)) + b"{not json"],
        [p.MAGIC + bytes((1, 10)) + b"[1, 2]"],  # not an object
        [p.encode(p.MsgType.SUBMIT, {"id": "x", "target": 3}), b"payload"],
        [p.encode(p.MsgType.SUBMIT, {"id": 1, "target": "a:b"})],  # no payload
        [p.encode(p.MsgType.SUBMIT, {"id": 2, "target": "nocolon"}), b"x"],
        [p.encode(p.MsgType.HEARTBEAT, {"node": "n"})],  # missing fields
        [p.encode(p.MsgType.RESULT, {"id": 1})],  # wrong direction
        [p.MAGIC + bytes((1, 10)) + b" " * (p.MAX_HEADER_BYTES + 1)],
    ]
    keys = load_keys(keys_dir)
    ctx = zmq.Context()
    try:
        for daemon in cluster:
            sock = _raw_dealer(ctx, keys, daemon.endpoint)
            for frames in bad:
                sock.send_multipart(frames)
            sock.close(0)
    finally:
        ctx.term()
    _assert_serving(cluster, keys_dir)


def test_oversized_frames_are_dropped(cluster: tuple[Any, Any], keys_dir: Path) -> None:
    huge = b"\0" * (MAX_MB * 1024 * 1024 + 1)
    ctx = zmq.Context()
    try:
        for daemon in cluster:
            sock = _raw_dealer(ctx, load_keys(keys_dir), daemon.endpoint)
            sock.send_multipart(
                [p.encode(p.MsgType.SUBMIT, {"id": 1, "target": TARGET}), huge]
            )
            sock.send(huge)
            time.sleep(0.2)
            sock.close(0)
    finally:
        ctx.term()
    _assert_serving(cluster, keys_dir)


# ---- the command line ----------------------------------------------------


def _cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("LUCIDITY_KEYS", None)
    return subprocess.run(
        [sys.executable, "-m", "lucidity", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_status_with_keys(cluster: tuple[Any, Any], keys_dir: Path) -> None:
    control = cluster[0].endpoint
    ok = _cli("status", "--control", control, "--keys", str(keys_dir))
    assert ok.returncode == 0, ok.stderr
    assert "1 node(s)" in ok.stdout and cluster[1].endpoint in ok.stdout
    start = time.monotonic()
    refused = _cli("status", "--control", control, "--timeout-ms", "10000")
    assert time.monotonic() - start < 8
    assert refused.returncode == 1
    assert "requires keys" in refused.stderr


@pytest.mark.parametrize("daemon", ["control", "node"])
def test_open_bind_without_keys_is_refused(daemon: str, spawn: Any) -> None:
    extra = ["--standalone", "--workers", "1"] if daemon == "node" else []
    result = _cli(daemon, "--bind", "tcp://0.0.0.0:*", *extra)
    assert result.returncode != 0
    assert "refusing to listen on tcp://0.0.0.0:*" in result.stderr
    assert "--insecure" in result.stderr and "lucidity keygen" in result.stderr
    started = spawn(daemon, "--bind", "tcp://0.0.0.0:*", "--insecure", *extra)
    assert started.proc.poll() is None


def test_keygen_cli(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    made = _cli("keygen", str(folder))
    assert made.returncode == 0, made.stderr
    assert (folder / "server.key_secret").exists()
    again = _cli("keygen", str(folder))
    assert again.returncode == 2 and "already holds" in again.stderr
    member = _cli("keygen", str(folder), "--member", "carol")
    assert member.returncode == 0, member.stderr
    assert (folder / "authorized" / "carol.key").exists()
    assert (folder / "members" / "carol" / "member.key_secret").exists()


# ---- the embedded cluster ------------------------------------------------


def _connect_as_nobody(path: str) -> str:
    # A fork, not a new interpreter: `nobody` may not read the one we run.
    # The child only drops its uid, connects and exits (no locks taken).
    """Try to connect to the unix socket `path` as user `nobody` (a forked
    child that drops to uid 65534); how it went."""
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, just an exit status
        code = 2
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            code = 1
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "refused", 1: "connected"}.get(os.waitstatus_to_exitcode(status), "?")


@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)
def test_embedded_cluster_is_private(app_dir: Path, monkeypatch: Any) -> None:
    """The embedded daemons listen only on ipc sockets in a 0700 folder: no
    other local user can connect (checked as `nobody` when we are root)."""
    from lucidity.embedded import start_embedded

    monkeypatch.syspath_prepend(str(app_dir))
    monkeypatch.delenv("LUCIDITY_KEYS", raising=False)
    cluster = start_embedded(nodes=1, workers=1)
    clients: list[Client] = []
    try:
        assert cluster.folder is not None
        folder = Path(cluster.folder)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        endpoints = [cluster.control, *cluster.nodes]
        for endpoint in endpoints:
            assert endpoint is not None and endpoint.startswith(f"ipc://{folder}/")
        own = Client(cluster.control)
        clients.append(own)
        own.wait_for_nodes(1, WAIT_S)
        assert _square(own, 4) == 16
        if os.geteuid() == 0:
            for endpoint in endpoints:
                assert endpoint is not None
                assert _connect_as_nobody(endpoint[len("ipc://") :]) == "refused"
    finally:
        for c in clients:
            c.close()
        cluster.stop()
    assert not folder.exists()
