"""Which addresses a daemon may listen on without keys, and its warnings.

Owns telling a loopback or private address from one the network can reach
(`is_loopback`, `is_private_ipc`), refusing to bind a reachable address
without keys unless `--insecure` (`check_bind`), and the loud warning of a
daemon run open (`warn_open`).

It inspects address strings (and an ipc socket's folder): it binds nothing
and reads no key file.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat

from lucidity.cluster.security.keys import Keys

__all__ = ["check_bind", "is_loopback", "is_private_ipc", "warn_open"]

log = logging.getLogger("lucidity.cluster.security")


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
