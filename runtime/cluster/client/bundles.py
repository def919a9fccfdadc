"""Bundles: a job's package zipped once per top-level package, and sent to a
node that asks for it (FETCH) by its digest.

Owns `_bundles`/`_by_digest` (made in `state`); sends only through the
dispatcher's `_send` (I/O thread) or the caller's own socket it is given.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from lucidity.bundle import Bundle, build_bundle
from lucidity.cluster.client.state import ClientState
from lucidity.cluster.wire import protocol as p
from lucidity.cluster.wire._loop import (
    send_frames,
)

__all__ = ["_Bundles"]

log = logging.getLogger("lucidity.cluster.client")


class _Bundles(ClientState):
    """The bundle cache and FETCH answers (see the module docstring)."""

    def _bundle(self, target: str) -> Bundle | None:
        module = target.partition(":")[0]
        if module == p.PICKLED_TARGET:
            module = target.split(":")[1]
        top = module.partition(".")[0]
        try:
            return self._bundles[top]
        except KeyError:
            pass
        with self._bundle_lock:
            if top not in self._bundles:
                bundle = build_bundle(module)
                if bundle is not None:
                    self._by_digest[bundle.digest] = bundle
                self._bundles[top] = bundle
            return self._bundles[top]

    def _send_bundle(self, sock: zmq.Socket[Any], addr: str, digest: str) -> None:
        bundle = self._by_digest.get(digest)
        frames: list[Any]
        if bundle is None:
            # Say so, or the node's jobs would wait for it until they expire.
            log.warning("a node asked for bundle %s, which is not ours", digest[:12])
            frames = [p.encode(p.MsgType.BUNDLE, {"bundle": digest, "missing": True})]
        else:
            frames = [p.encode(p.MsgType.BUNDLE, {"bundle": digest}), bundle.data]
        if threading.current_thread() is self._thread:
            self._send(addr, frames)
        else:
            send_frames(sock, frames)  # a caller's own socket, as it waits
