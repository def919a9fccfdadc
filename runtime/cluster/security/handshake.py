"""A client's side of security: watching its handshakes, saying why it was refused.

Owns `HandshakeWatch` (one socket's monitor: a refused or failed CURVE
handshake calls `on_refused` once per run of failures, with an
`AuthenticationError` that says why and what to do; a later success calls
`on_accepted`) and the messages of those errors (`handshake_error`).

It reads the monitor socket of the socket it watches and nothing else: it
sends nothing, and reconnecting or failing jobs is its caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from lucidity.cluster.security.keys import INSECURE_ENV, KEYS_ENV, Keys
from lucidity.errors import AuthenticationError

__all__ = ["HANDSHAKE_EVENTS", "HandshakeWatch", "handshake_error"]

log = logging.getLogger("lucidity.cluster.security")

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
