"""Security with real daemons: `lucidity control` and `lucidity node` processes
on loopback, CURVE keys, refused strangers, revoked members, hostile frames."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from lucidity._options import validate_options
from lucidity.cluster.client import Client
from lucidity.cluster.security import Keys, add_member, keygen, load_keys, secure_client
from lucidity.cluster.wire import protocol as p
from lucidity.errors import AuthenticationError

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
    # Without --keys: this user's own keys, which are not this cluster's.
    start = time.monotonic()
    refused = _cli("status", "--control", control, "--timeout-ms", "10000")
    assert time.monotonic() - start < 8
    assert refused.returncode == 1
    assert "are not this cluster's" in refused.stderr
    bare = _cli("status", "--control", control, "--insecure", "--timeout-ms", "10000")
    assert bare.returncode == 1 and "requires keys" in bare.stderr


@pytest.mark.parametrize("daemon", ["control", "node"])
def test_open_bind_without_keys_is_refused(daemon: str) -> None:
    # Through the API (no keys, not insecure); the command line always has
    # keys unless --insecure (see the keys-by-default tests).
    from lucidity.cluster.control import ControlDaemon
    from lucidity.cluster.node.daemon import NodeDaemon

    with pytest.raises(SystemExit, match="refusing to listen on tcp://0.0.0.0"):
        if daemon == "control":
            ControlDaemon("tcp://0.0.0.0:*")
        else:
            NodeDaemon("tcp://0.0.0.0:*", None, 1)


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


def _as_nobody(action: Callable[[], None]) -> str:
    """Run `action` in a forked child as user `nobody` (uid/gid 65534): "ok",
    "refused" (PermissionError), or "no drop" if the child could not become
    nobody (then nothing was tried: never counted as refused)."""
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, just an exit status
        code = 2
        try:
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            except OSError:
                code = 3
            else:
                if os.geteuid() != 65534 or os.getegid() != 65534:
                    code = 3
                else:
                    try:
                        action()
                        code = 1
                    except PermissionError:
                        code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: "refused", 1: "ok", 3: "no drop"}.get(code, f"exit {code}")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "checking what another local user can do needs root (to become "
            "`nobody`); run as root to check it"
        )


def _unix_connect(path: str) -> Callable[[], None]:
    def connect() -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)

    return connect


def test_embedded_cluster_is_private(app_dir: Path, monkeypatch: Any) -> None:
    """The embedded daemons listen only on ipc sockets in a 0700 folder, and
    its own process uses them (what other users can do: the test below)."""
    from lucidity.cluster.embedded import start_embedded

    monkeypatch.syspath_prepend(str(app_dir))
    monkeypatch.delenv("LUCIDITY_KEYS", raising=False)
    cluster = start_embedded(nodes=1, workers=1)
    clients: list[Client] = []
    try:
        assert cluster.folder is not None
        folder = Path(cluster.folder)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert folder.stat().st_uid == os.geteuid()
        endpoints = [cluster.control, *cluster.nodes]
        for endpoint in endpoints:
            assert endpoint is not None and endpoint.startswith(f"ipc://{folder}/")
        own = Client(cluster.control)
        clients.append(own)
        own.wait_for_nodes(1, WAIT_S)
        assert _square(own, 4) == 16
    finally:
        for c in clients:
            c.close()
        cluster.stop()
    assert not folder.exists()


def test_embedded_cluster_makes_and_needs_no_keys(
    own_config: tuple[Path, Any],
) -> None:
    """No cluster configured: the embedded one runs without keys (private by
    its folder), and nothing of this user's keys folder is made or read."""
    import lucidity
    from lucidity.cluster.client import get_client

    config, _ = own_config
    try:
        assert _square(get_client(), 5) == 25
        assert get_client().keys is None
    finally:
        lucidity.shutdown()
    assert not (config / "lucidity").exists()


@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)
def test_embedded_cluster_refuses_other_users(app_dir: Path, monkeypatch: Any) -> None:
    """As `nobody`, connecting to the embedded daemons' sockets is refused,
    while the same connect to a socket others may use succeeds (so "refused"
    means the folder, not a broken probe)."""
    from lucidity.cluster.embedded import start_embedded

    _need_root()
    open_dir = tempfile.mkdtemp(prefix="lucidity-open-")
    try:
        os.chmod(open_dir, 0o755)
        listener = socket.socket(socket.AF_UNIX)
        open_sock = os.path.join(open_dir, "sock")
        listener.bind(open_sock)
        listener.listen(1)
        os.chmod(open_sock, 0o777)
        with listener:
            assert _as_nobody(_unix_connect(open_sock)) == "ok"
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)

    monkeypatch.syspath_prepend(str(app_dir))
    cluster = start_embedded(nodes=1, workers=1)
    try:
        for endpoint in [cluster.control, *cluster.nodes]:
            assert endpoint is not None
            path = endpoint[len("ipc://") :]
            assert _as_nobody(_unix_connect(path)) == "refused", endpoint
    finally:
        cluster.stop()


# ---- keys by default -------------------------------------------------------


def _node_args(control: str, *extra: str) -> list[str]:
    return [
        "--control",
        control,
        "--bind",
        "tcp://127.0.0.1:*",
        "--workers",
        "1",
        "--heartbeat-ms",
        "200",
        *extra,
    ]


@pytest.fixture
def own_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_dir: Path, make_daemons: Any
) -> tuple[Path, Any]:
    """A fresh `$XDG_CONFIG_HOME` for this test and its daemons, and a
    `start(KIND, ARGS...)` of daemons that see it."""
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    for name in (
        "LUCIDITY_KEYS",
        "LUCIDITY_CONTROL",
        "LUCIDITY_NODE",
        "LUCIDITY_INSECURE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(app_dir))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(app_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    daemons = make_daemons(app_dir, env)
    return config, lambda kind, *args: daemons.start(kind, *args)


def test_hand_started_cluster_is_closed_by_default(
    own_config: tuple[Path, Any], client_for: Any
) -> None:
    import lucidity
    from lucidity.cluster.client import get_client

    config, start = own_config
    control = start("control", "--bind", "tcp://127.0.0.1:*")
    start("node", *_node_args(control.endpoint))
    folder = config / "lucidity" / "keys"
    for made in (config / "lucidity", folder, folder / "authorized"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    assert stat.S_IMODE((folder / "member.key_secret").stat().st_mode) == 0o600
    # The same user notices nothing: no keys given anywhere.
    lucidity.connect(control.endpoint)
    get_client().wait_for_nodes(1, WAIT_S)
    assert _square(get_client(), 11) == 121
    status = _cli("status", "--control", control.endpoint)
    assert status.returncode == 0, status.stderr
    assert "1 node(s)" in status.stdout

    # Without this user's keys: refused at the handshake, control and node.
    def stranger() -> Client:
        return Client(control.endpoint, keys=None)

    assert "requires keys" in str(_refused(stranger()))
    node = get_client().nodes()[0]["addr"]
    assert "requires keys" in str(_refused(stranger(), addr=node))


@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)
def test_other_users_cannot_read_this_users_keys(own_config: tuple[Path, Any]) -> None:
    from lucidity.cluster.security import default_keys

    _need_root()
    config, _ = own_config
    folder = default_keys(server=True).path
    assert folder == (config / "lucidity" / "keys").resolve()
    for target in (folder / "member.key_secret", folder / "server.key_secret"):
        assert _as_nobody(target.read_bytes) == "refused", target
    assert _as_nobody(lambda: None) == "ok"  # the drop itself works


def test_default_keys_made_once_by_racing_processes(
    own_config: tuple[Path, Any],
) -> None:
    code = (
        "from lucidity.cluster.security import default_keys; "
        "print(default_keys(server=True).server_public.decode())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(outs)) == 1 and outs[0]
    folder = own_config[0] / "lucidity"
    assert [p.name for p in folder.iterdir()] == ["keys"]  # no temporary left


def test_insecure_runs_open_with_a_warning(
    own_config: tuple[Path, Any], client_for: Any
) -> None:
    import lucidity
    from lucidity.cluster.client import get_client

    config, start = own_config
    control = start("control", "--bind", "tcp://127.0.0.1:*", "--insecure")
    node = start("node", *_node_args(control.endpoint, "--insecure"))
    for daemon in (control, node):
        assert "INSECURE (--insecure)" in daemon.log_text()
        assert "WITHOUT KEYS" in daemon.log_text()
    assert not (config / "lucidity").exists()  # no keys were made or used
    # This user's keys against an open cluster: a clear error, not a hang.
    from lucidity.cluster.security import default_keys

    error = _refused(Client(control.endpoint, keys=default_keys()))
    assert "LUCIDITY_INSECURE=1" in str(error)
    lucidity.connect(control.endpoint, insecure=True)
    get_client().wait_for_nodes(1, WAIT_S)
    assert _square(get_client(), 12) == 144


# ---- key files' permissions ------------------------------------------------


def test_group_readable_secret_keys_are_refused(tmp_path: Path) -> None:
    from lucidity.errors import KeysError

    folder = keygen(tmp_path / "keys")
    for name in ("member.key_secret", "server.key_secret"):
        secret = folder / name
        secret.chmod(0o640)
        with pytest.raises(KeysError) as info:
            load_keys(folder, server=True)
        assert str(secret) in str(info.value) and "mode 0640" in str(info.value)
        assert "chmod 600" in str(info.value)
        result = _cli(
            "node", "--standalone", "--bind", "tcp://127.0.0.1:*", "--keys", str(folder)
        )
        assert result.returncode == 2 and f"{secret}: mode 0640" in result.stderr
        secret.chmod(0o600)
    load_keys(folder, server=True)


def test_writable_authorized_folder_is_refused(tmp_path: Path) -> None:
    from lucidity.errors import KeysError

    folder = keygen(tmp_path / "keys")
    authorized = folder / "authorized"
    authorized.chmod(0o770)
    with pytest.raises(KeysError, match=r"authorized: mode 0770 lets group"):
        load_keys(folder, server=True)
    authorized.chmod(0o700)
    (authorized / "member.key").chmod(0o666)
    with pytest.raises(KeysError, match=r"member.key: mode 0666 lets group"):
        load_keys(folder, server=True)


def test_authorized_made_writable_while_running_refuses_everyone(
    client_for: Any, keys_dir: Path, cluster: tuple[Any, Any]
) -> None:
    authorized = keys_dir / "authorized"
    authorized.chmod(0o777)
    try:
        error = _refused(client_for(load_keys(keys_dir)), addr=cluster[1].endpoint)
        assert "refused this member's key" in str(error)
    finally:
        authorized.chmod(0o700)
    _assert_serving(cluster, keys_dir)


def test_revocation_in_the_same_mtime_tick_is_seen(
    client_for: Any, keys_dir: Path, cluster: tuple[Any, Any]
) -> None:
    erin = load_keys(add_member(keys_dir, "erin"))
    client = client_for(erin)
    client.wait_for_nodes(1, WAIT_S)
    authorized = keys_dir / "authorized"
    # A change now, read by the daemons on erin's next job...
    os.utime(authorized)
    assert _square(client, 2) == 4
    tick = authorized.stat().st_mtime_ns
    # ...and erin's key deleted in the same tick of the folder's clock (its
    # mtime as it was: a coarse clock does that on its own).
    (authorized / "erin.key").unlink()
    os.utime(authorized, ns=(tick, tick))
    with pytest.raises(AuthenticationError, match="no longer authorised"):
        _square(client, 6)
    _assert_serving(cluster, keys_dir)


# ---- a heartbeat's claims ----------------------------------------------------


MAX_NODE_WORKERS = 1024  # the bound a node's announced workers must keep


def test_heartbeat_workers_are_bounded(spawn: Any, keys_dir: Path) -> None:
    control = spawn("control", "--bind", "tcp://127.0.0.1:*", "--keys", str(keys_dir))
    ctx = zmq.Context()
    try:
        sock = _raw_dealer(ctx, load_keys(keys_dir), control.endpoint)
        for name, workers in [
            ("huge", 10**9),
            ("zero", 0),
            ("max", MAX_NODE_WORKERS),
            ("two", 2),
        ]:
            beat = {"node": name, "addr": "tcp://127.0.0.1:9", "workers": workers}
            sock.send(p.encode(p.MsgType.HEARTBEAT, beat))
        sock.send(p.encode(p.MsgType.SUBSCRIBE, {"once": True}))
        assert sock.poll(int(WAIT_S * 1000))
        nodes = p.decode(sock.recv()).header["nodes"]
        sock.close(0)
    finally:
        ctx.term()
    assert {n["id"]: n["workers"] for n in nodes} == {
        "max": MAX_NODE_WORKERS,
        "two": 2,
    }
    too_many = _cli("node", "--standalone", "--workers", str(MAX_NODE_WORKERS + 1))
    assert too_many.returncode == 2
    assert f"must be <= {MAX_NODE_WORKERS}" in too_many.stderr
    from lucidity.cluster import security

    assert security.MAX_NODE_WORKERS == MAX_NODE_WORKERS


def test_fanout_window_ignores_an_inflated_workers_claim() -> None:
    from lucidity.cluster.client.membership import _worker_slots

    assert _worker_slots({"workers": 10**9}) == MAX_NODE_WORKERS
    assert _worker_slots({"workers": "lots"}) == 1
    assert _worker_slots({"workers": -5}) == 1
    assert _worker_slots({"workers": 8}) == 8
