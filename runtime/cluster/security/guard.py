"""A daemon's side of security: who may connect, and who may still send.

Owns the ZAP handler (`Authorizer`: a `zmq.auth.ThreadAuthenticator` on the
daemon's context that lets a CURVE key in iff it is in `authorized/`, and the
per-message check that drops a revoked member's messages) and `Guard`, the one
object a daemon holds: it sets up its bound and outgoing sockets, checks each
message's sender and answers a revoked member's job with an error.

It reads `authorized/` through `keys.read_authorized` and never writes a key;
it sets up the sockets the daemon hands it but owns none but the
authenticator's.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from lucidity.cluster.security.keys import Keys, read_authorized
from lucidity.cluster.security.sockets import (
    DEFAULT_MAX_MESSAGE_MB,
    secure_client,
    secure_server,
    set_max_message,
)
from lucidity.errors import AuthenticationError, KeysError

__all__ = ["Authorizer", "Guard"]

log = logging.getLogger("lucidity.cluster.security")


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
        self.auth = ThreadAuthenticator(
            ctx, log=logging.getLogger("lucidity.cluster.security.zap")
        )
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
