"""Keys, authorised members, and the limits every network-facing socket gets.

A keys folder (`lucidity keygen DIR`) holds:

    server.key, server.key_secret   the cluster's CURVE keypair: every daemon's
                                    bound sockets (control, node) use it
    member.key, member.key_secret   a member keypair: clients, and daemons'
                                    outgoing connections (node -> control)
    authorized/*.key                the public keys allowed in

`lucidity keygen DIR --member NAME` adds a member: `DIR/members/NAME/` is a
complete client keys folder (the server's public key and NAME's keypair, no
server secret) and `DIR/authorized/NAME.key` lets it in. Revoking NAME is
deleting `authorized/NAME.key` on the daemons' machines: a daemon re-reads the
folder on every handshake, and checks the sender's key on every message it
receives against the folder as it is now (cached until the folder changes),
so a revoked member is refused new connections and its messages on open
connections are dropped, with no restart or signal.

Without `--keys` (or `$LUCIDITY_KEYS`), daemons, `lucidity status` and
clients all use this user's own keys folder, `$XDG_CONFIG_HOME/lucidity/keys`
(default `~/.config/lucidity/keys`), made 0700 on first use: a hand-started
cluster is closed to other local users, and its own user notices nothing.
`--insecure` (daemons, status) or `LUCIDITY_INSECURE=1` (clients) runs open.
Secret keys readable by group or others, and an `authorized/` folder or key
that others may write, are refused.

Daemons run a `zmq.auth.ThreadAuthenticator` (the ZAP handler) on their
context. Clients watch each socket's handshake through a socket monitor, so a
refused client fails within moments with a message saying why, never hangs.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from lucidity.errors import AuthenticationError, KeysError

__all__ = [
    "DEFAULT_MAX_MESSAGE_MB",
    "HANDSHAKE_EVENTS",
    "INSECURE_ENV",
    "KEYS_ENV",
    "MAX_MESSAGE_ENV",
    "MAX_NODE_WORKERS",
    "Authorizer",
    "Guard",
    "HandshakeWatch",
    "Keys",
    "add_member",
    "check_bind",
    "client_max_message",
    "default_keys",
    "default_keys_dir",
    "is_loopback",
    "is_private_ipc",
    "warn_open",
    "keygen",
    "keys_from_env",
    "load_keys",
    "secure_client",
    "secure_server",
    "set_max_message",
]

log = logging.getLogger(__name__)

KEYS_ENV = "LUCIDITY_KEYS"
# Set by a node without keys for its workers (their nested jobs' clients), and
# by users of a cluster started with --insecure: no keys, not even the default.
INSECURE_ENV = "LUCIDITY_INSECURE"
# The most workers a node may announce: a heartbeat's `workers` sizes every
# client's fanout window, so a peer must not make it unbounded.
MAX_NODE_WORKERS = 1024
MAX_MESSAGE_ENV = "LUCIDITY_MAX_MESSAGE_MB"
DEFAULT_MAX_MESSAGE_MB = 1024

SERVER = "server"
MEMBER = "member"
AUTHORIZED = "authorized"
MEMBERS = "members"


# ---- key folders -----------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """A loaded keys folder. `server_secret` is None in a client-only folder."""

    path: Path
    public: bytes
    secret: bytes
    server_public: bytes
    server_secret: bytes | None

    @property
    def authorized(self) -> Path:
        return self.path / AUTHORIZED


def _check_mode(file: Path, forbidden: int, what: str, fix: str) -> None:
    """Refuse `file` if its mode has any of the `forbidden` bits."""
    try:
        mode = stat.S_IMODE(os.stat(file).st_mode)
    except OSError:
        return  # missing: the read that follows says so
    if mode & forbidden:
        raise KeysError(
            f"{file}: mode {mode:04o} lets {what}; refusing to use it "
            f"(chmod {fix} {file})"
        )


_SECRET_MODE = stat.S_IRWXG | stat.S_IRWXO  # a secret key: this user only
_WRITE_MODE = stat.S_IWGRP | stat.S_IWOTH  # what decides who gets in


def _load(path: Path, name: str, secret: bool) -> tuple[bytes, bytes | None]:
    file = path / f"{name}.key_secret" if secret else path / f"{name}.key"
    if secret:
        _check_mode(file, _SECRET_MODE, "group or others read a secret key", "600")
    try:
        public, sec = zmq.auth.load_certificate(file)
    except (OSError, ValueError) as exc:
        raise KeysError(
            f"keys folder {path}: cannot read {file.name} ({exc}); "
            "make one with `lucidity keygen DIR`"
        ) from None
    if secret and not sec:
        raise KeysError(f"keys folder {path}: {file.name} holds no secret key")
    return public, sec


def load_keys(path: str | os.PathLike[str], server: bool = False) -> Keys:
    """Read a keys folder; `server=True` also requires the server's secret key
    (a daemon) and its `authorized/` folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise KeysError(
            f"keys folder {folder} does not exist; make one with "
            f"`lucidity keygen {folder}`"
        )
    public, secret = _load(folder, MEMBER, secret=True)
    assert secret is not None
    server_secret: bytes | None = None
    if server:
        server_public, server_secret = _load(folder, SERVER, secret=True)
        if not (folder / AUTHORIZED).is_dir():
            raise KeysError(f"keys folder {folder} has no {AUTHORIZED}/ folder")
        read_authorized(folder / AUTHORIZED)
    else:
        server_public, _ = _load(folder, SERVER, secret=False)
    return Keys(folder.resolve(), public, secret, server_public, server_secret)


def read_authorized(folder: Path) -> frozenset[bytes]:
    """The public keys (z85) let in by `folder`; refuse a folder or key file
    that group or others may write (they could let themselves in)."""
    fix = "go-w"
    _check_mode(folder, _WRITE_MODE, "group or others add keys to it", fix)
    allowed = set()
    for entry in os.scandir(folder):
        if entry.name.endswith(".key"):
            file = Path(entry.path)
            _check_mode(file, _WRITE_MODE, "group or others change it", fix)
            try:
                public, _ = zmq.auth.load_certificate(file)
            except (OSError, ValueError) as exc:
                raise KeysError(f"{file}: not a public key ({exc})") from None
            if public:
                allowed.add(public)
    return frozenset(allowed)


def default_keys_dir() -> Path:
    """This user's own keys folder: `$XDG_CONFIG_HOME/lucidity/keys`, or
    `~/.config/lucidity/keys` (a relative XDG_CONFIG_HOME is ignored, as the
    XDG spec says)."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path("~/.config").expanduser()
    return base / "lucidity" / "keys"


def default_keys(server: bool = False) -> Keys:
    """Load this user's keys folder, making it (0700) on first use.

    It is made whole in a private temporary folder beside it and renamed
    into place, so two daemons starting at once agree on one set of keys.
    """
    folder = default_keys_dir()
    if not folder.exists():
        _private_dir(folder.parent)
        tmp = tempfile.mkdtemp(prefix=".keys-", dir=folder.parent)
        try:
            keygen(tmp)
            os.rename(tmp, folder)
            log.info("made this user's keys folder %s", folder)
        except OSError:
            if not folder.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_keys(folder, server=server)


def keys_from_env() -> Keys | None:
    """A client's keys: `$LUCIDITY_KEYS`, none with `$LUCIDITY_INSECURE`,
    else this user's own folder (see `default_keys`)."""
    path = os.environ.get(KEYS_ENV)
    if path:
        return load_keys(path)
    if os.environ.get(INSECURE_ENV, "") not in ("", "0"):
        return None
    return default_keys()


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _create(folder: Path, name: str) -> tuple[Path, Path]:
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)  # whatever the umask: read_authorized checks it
    return Path(public), Path(secret)


def _authorize(public: Path, folder: Path, name: str) -> None:
    target = folder / AUTHORIZED / f"{name}.key"
    shutil.copyfile(public, target)
    os.chmod(target, 0o644)


def keygen(path: str | os.PathLike[str]) -> Path:
    """Make a cluster's keys in `path` (created 0700); refuse to overwrite."""
    folder = Path(path).expanduser()
    if (folder / f"{SERVER}.key_secret").exists():
        raise KeysError(
            f"{folder} already holds a cluster's keys; to add a member use "
            f"`lucidity keygen {folder} --member NAME`"
        )
    _private_dir(folder)
    _private_dir(folder / AUTHORIZED)
    _create(folder, SERVER)
    member_public, _ = _create(folder, MEMBER)
    _authorize(member_public, folder, MEMBER)
    return folder


def add_member(path: str | os.PathLike[str], name: str) -> Path:
    """Add member `name` to the cluster keys in `path`; return its own folder.

    `path/members/NAME/` is a complete client keys folder (copy it to the
    member's machine); `path/authorized/NAME.key` lets it in.
    """
    folder = Path(path).expanduser()
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise KeysError(f"member name {name!r}: use letters, digits, - and _")
    if name in (SERVER, MEMBER):
        raise KeysError(f"member name {name!r} is reserved")
    load_keys(folder, server=True)
    target = folder / MEMBERS / name
    if (folder / AUTHORIZED / f"{name}.key").exists() or target.exists():
        raise KeysError(f"{folder} already has a member {name!r}")
    _private_dir(folder / MEMBERS)
    _private_dir(target)
    shutil.copyfile(folder / f"{SERVER}.key", target / f"{SERVER}.key")
    public, secret = _create(target, MEMBER)
    _authorize(public, folder, name)
    return target


# ---- sockets -----------------------------------------------------------------


def secure_server(sock: zmq.Socket[Any], keys: Keys) -> None:
    """Make `sock` (before it binds) a CURVE server with the cluster's keypair."""
    if keys.server_secret is None:
        raise KeysError(
            f"keys folder {keys.path} has no {SERVER}.key_secret: it is a member's "
            "folder, which clients use; daemons need the cluster's folder"
        )
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True


def secure_client(sock: zmq.Socket[Any], keys: Keys) -> None:
    """Make `sock` (before it connects) a CURVE client with the member keypair."""
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
    sock.curve_serverkey = keys.server_public


def set_max_message(sock: zmq.Socket[Any], max_mb: int) -> None:
    """Disconnect a peer that sends a frame larger than `max_mb` MiB."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_mb * 1024 * 1024)


def client_max_message() -> int:
    text = os.environ.get(MAX_MESSAGE_ENV, "")
    try:
        value = int(text) if text else DEFAULT_MAX_MESSAGE_MB
    except ValueError:
        value = DEFAULT_MAX_MESSAGE_MB
    return max(1, value)


# ---- binding -----------------------------------------------------------------


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name, a host name: not provably local


def check_bind(address: str, keys: Keys | None, insecure: bool, what: str) -> None:
    """Refuse to bind a non-loopback address without keys, unless `insecure`."""
    scheme, sep, _ = address.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        raise SystemExit(
            f"lucidity {what}: cannot bind {address}: not a ZeroMQ endpoint; "
            "expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:3030) or ipc://PATH"
        )
    if keys is not None or is_loopback(address):
        return
    if not insecure:
        raise SystemExit(
            f"lucidity {what}: refusing to listen on {address} without keys: "
            "jobs carry pickles, so anyone who can reach this port could run code "
            "on every node. Make keys with `lucidity keygen DIR` and pass "
            "`--keys DIR`, bind a loopback address, or pass --insecure to accept "
            "the risk."
        )
    log.warning(
        "INSECURE: %s listens on %s WITHOUT KEYS: anyone who can reach this port "
        "can run arbitrary code on every node of this cluster",
        what,
        address,
    )


def is_private_ipc(address: str) -> bool:
    """True for an ipc:// socket in a folder only this user can enter (as the
    embedded cluster's): private without keys."""
    scheme, sep, path = address.partition("://")
    if scheme != "ipc" or not sep:
        return False
    try:
        st = os.stat(os.path.dirname(path) or ".")
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not stat.S_IMODE(st.st_mode) & 0o077


def warn_open(address: str, what: str) -> None:
    """The loud warning of a daemon run with --insecure (no keys)."""
    if is_private_ipc(address):
        log.info("%s on %s runs without keys: private by its folder", what, address)
        return
    log.warning(
        "INSECURE (--insecure): %s on %s runs WITHOUT KEYS: any user who can "
        "connect to it can register nodes, read the results and bundles of "
        "jobs, and run code in every client and node of this cluster",
        what,
        address,
    )


# ---- authorising members -----------------------------------------------------


# A folder's mtime moves in coarse ticks (a jiffy on Linux, 2 s on FAT): a
# key deleted in the tick of the change the cache was read after leaves the
# mtime as it was. So a cache read within this long of its folder's mtime is
# not trusted (as git treats a "racy" index): it is checked against the
# folder's listing until the mtime is older than this.
_RACY_NS = 2_000_000_000


class Authorizer:
    """The daemon's ZAP handler: a CURVE key is in iff it is in `authorized/`.

    The folder is re-read on every handshake and whenever it changes (its
    modification time, or its listing while that time is recent), so adding
    or deleting a key file takes effect at once.
    """

    def __init__(self, ctx: zmq.Context[Any], keys: Keys) -> None:
        self.folder = keys.authorized
        self._folder_str = str(keys.authorized)
        self._stamp: int | None = None
        self._racy = True
        self._listing: frozenset[tuple[str, int]] = frozenset()
        self._allowed: frozenset[bytes] = frozenset()
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger(__name__ + ".zap"))
        self.auth.start()
        self.auth.configure_curve_callback("*", self)

    def _list(self) -> frozenset[tuple[str, int]]:
        # A name and its inode: a key deleted, added or replaced changes it.
        with os.scandir(self._folder_str) as entries:
            return frozenset((e.name, e.inode()) for e in entries)

    def _read(self) -> frozenset[bytes]:
        try:
            now = time.time_ns()
            stamp = os.stat(self._folder_str).st_mtime_ns
            listing = self._list()
            allowed = read_authorized(self.folder)
        except (OSError, KeysError) as exc:
            log.error("cannot use %s: %s; refusing every key", self.folder, exc)
            self._stamp = None
            return frozenset()
        self._stamp, self._listing, self._allowed = stamp, listing, allowed
        self._racy = now - stamp < _RACY_NS
        return allowed

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the ZAP thread for each CURVE handshake (z85 key)."""
        allowed = key in self._read()
        if not allowed:
            log.warning("refused a connection with an unauthorised key %s", key[:8])
        return allowed

    def current(self) -> frozenset[bytes]:
        # On every message (revocation takes effect at once): os.stat of a
        # str is a few times cheaper than Path.stat, and a stat is ~1 us.
        try:
            stamp = os.stat(self._folder_str).st_mtime_ns
            if stamp != self._stamp:
                return self._read()
            if self._racy:
                now = time.time_ns()  # before the listing: a change after it is seen
                if self._list() != self._listing:
                    return self._read()
                self._racy = now - stamp < _RACY_NS
        except OSError:
            return frozenset()
        return self._allowed

    def allows(self, frame: zmq.Frame) -> bool:
        """Whether the sender of `frame` (a received frame) is still authorised."""
        try:
            user = frame.get("User-Id")
        except (zmq.ZMQError, TypeError):
            return False
        key = user.encode() if isinstance(user, str) else bytes(user)
        if key in self.current():
            return True
        log.warning("dropped a message from a revoked key %s", key[:8])
        return False

    def stop(self) -> None:
        self.auth.stop()


class Guard:
    """A daemon's security in one object: its ZAP handler (with keys), how it
    sets up bound and outgoing sockets, and the per-message key check."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        keys: Keys | None,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
    ) -> None:
        self.keys = keys
        self.max_message_mb = max_message_mb
        self.authorizer = Authorizer(ctx, keys) if keys is not None else None

    def server(self, sock: zmq.Socket[Any]) -> None:
        """A socket that binds and faces the network (call before `bind`)."""
        if self.keys is not None:
            secure_server(sock, self.keys)
        set_max_message(sock, self.max_message_mb)

    def client(self, sock: zmq.Socket[Any]) -> None:
        """A socket that connects out to another daemon (call before `connect`)."""
        if self.keys is not None:
            secure_client(sock, self.keys)
        set_max_message(sock, self.max_message_mb)

    def allows(self, frame: zmq.Frame) -> bool:
        return self.authorizer is None or self.authorizer.allows(frame)

    def refuse(self, sock: zmq.Socket[Any], ident: bytes, frame: zmq.Frame) -> None:
        """Answer a revoked member's job with an error rather than silence, so
        its caller fails at once instead of waiting forever."""
        from lucidity.cluster.wire import protocol as p

        try:
            msg = p.decode(frame.buffer)
            if msg.type != p.MsgType.SUBMIT:
                return
            job_id = int(msg.header["id"])
        except (p.FrameError, KeyError, TypeError, ValueError):
            return
        error = AuthenticationError(
            "this member's key is no longer authorised by the cluster "
            "(it was revoked from the daemons' authorized/ folder)"
        )
        head = p.encode(p.MsgType.RESULT, {"id": job_id, "ok": False, "node": ""})
        try:
            sock.send_multipart([ident, head, *p.dumps_error(error)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def stop(self) -> None:
        if self.authorizer is not None:
            self.authorizer.stop()


# ---- watching a client's handshakes -----------------------------------------

HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
# A refusal (AUTH) or a protocol failure (such as a mechanism mismatch: no keys
# against a keyed daemon, after which ZeroMQ stops reconnecting) fails at once;
# a handshake that breaks with no detail (a wrong server key, or no keys)
# fails after this many in a row without a success.
_UNEXPLAINED_FAILURES = 2


def handshake_error(address: str, keys: Keys | None, auth: bool) -> AuthenticationError:
    if keys is None:
        return AuthenticationError(
            f"the cluster at {address} refused the connection: it requires keys. "
            f"Set {KEYS_ENV}=DIR or call lucidity.connect(address, keys=DIR) with "
            "the cluster's keys folder (made by `lucidity keygen DIR`)"
        )
    if auth:
        return AuthenticationError(
            f"the cluster at {address} refused this member's key "
            f"({keys.path}/member.key): it is not in the daemons' authorized/ "
            "folder, or it was revoked"
        )
    return AuthenticationError(
        f"the secure handshake with {address} failed: the keys in {keys.path} "
        "are not this cluster's (its server.key differs), or the cluster runs "
        f"without keys (--insecure: then set {INSECURE_ENV}=1 or call "
        "lucidity.connect(address, insecure=True))"
    )


class HandshakeWatch:
    """Follow one socket's handshakes through its monitor socket.

    `on_refused(error)` is called once per run of failures; a later successful
    handshake (keys fixed, member re-authorised) resets it and calls
    `on_accepted()`.
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        address: str,
        keys: Keys | None,
        on_refused: Callable[[AuthenticationError], None],
        on_accepted: Callable[[], object] | None = None,
    ) -> None:
        self.sock = sock
        self.address = address
        self.keys = keys
        self.on_refused = on_refused
        self.on_accepted = on_accepted
        self.monitor: zmq.Socket[Any] = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self.monitor.linger = 0
        self.failures = 0
        self.succeeded = False
        self.error: AuthenticationError | None = None

    def on_event(self) -> None:
        while True:
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            try:
                event = parse_monitor_message(frames)["event"]
            except Exception:  # a monitor message we cannot read: ignore it
                continue
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                was_refused = self.error is not None
                self.failures, self.error = 0, None
                self.succeeded = True
                if was_refused and self.on_accepted is not None:
                    self.on_accepted()
                continue
            self.failures += 1
            auth = event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            final = auth or event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            # Handshakes cut without detail are how a keyless client meets a
            # keyed cluster, but also how a proxy or tunnel in front of a
            # restarting node behaves: they only mean "keys" at an address
            # that never accepted us. Elsewhere the job's liveness checks act.
            unexplained = not self.succeeded and self.failures >= _UNEXPLAINED_FAILURES
            if self.error is None and (final or unexplained):
                self.error = handshake_error(self.address, self.keys, auth)
                log.warning("%s", self.error)
                self.on_refused(self.error)

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
