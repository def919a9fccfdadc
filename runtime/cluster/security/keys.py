"""Keys folders on disk: making them, loading them, and who they let in.

Owns `keygen` and `add_member` (a cluster's keys, a member's folder), the
default keys folder (`default_keys_dir`, made 0700 on first use by
`default_keys`), a client's keys from the environment (`keys_from_env`),
loading a folder (`load_keys`, refusing secret keys readable by group or
others) and reading `authorized/` (`read_authorized`, refusing a folder or key
that others may write).

It touches files only: no socket, no ZeroMQ context (pyzmq's `zmq.auth` only
reads and writes certificate files). Sockets are `sockets`' and the daemon's
per-handshake check is `guard`'s.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from lucidity.errors import KeysError

__all__ = [
    "AUTHORIZED",
    "INSECURE_ENV",
    "KEYS_ENV",
    "MEMBER",
    "MEMBERS",
    "SERVER",
    "Keys",
    "add_member",
    "default_keys",
    "default_keys_dir",
    "keygen",
    "keys_from_env",
    "load_keys",
    "read_authorized",
]

log = logging.getLogger("lucidity.cluster.security")

KEYS_ENV = "LUCIDITY_KEYS"
# Set by a node without keys for its workers (their nested jobs' clients), and
# by users of a cluster started with --insecure: no keys, not even the default.
INSECURE_ENV = "LUCIDITY_INSECURE"

SERVER = "server"
MEMBER = "member"
AUTHORIZED = "authorized"
MEMBERS = "members"


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
