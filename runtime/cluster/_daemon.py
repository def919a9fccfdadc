"""What the control and node daemons share: binding, readiness, how they end.

A daemon ends on SIGTERM/SIGINT, or, when started with `--parent-pipe`, the
moment its parent's end of that pipe closes (the parent exited, however it
exited): the pipe's fd sits in the daemon's poller, so no watchdog polls.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import zmq

from lucidity.cluster.wire._loop import EventLoop

__all__ = ["bind", "install_stop", "announce", "watch_parent"]

log = logging.getLogger(__name__)


class BindError(SystemExit):
    pass


def bind(sock: zmq.Socket[Any], address: str, what: str) -> str:
    """Bind `sock` to `address`; return the real endpoint (port resolved)."""
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        raise SystemExit(f"lucidity {what}: cannot bind {address}: {exc}") from None
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(endpoint, bytes)
    return endpoint.decode()


def install_stop(loop: EventLoop) -> None:
    """SIGTERM and SIGINT stop the loop (wakes it through a pipe fd)."""
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)

    def _on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        loop.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    def _drain() -> None:
        try:
            os.read(rfd, 512)
        except BlockingIOError:
            pass

    os.set_blocking(rfd, False)
    loop.add_reader(rfd, _drain)


def watch_parent(loop: EventLoop, fd: int) -> None:
    """Stop the loop when the parent's end of pipe `fd` closes."""

    def _on_parent() -> None:
        try:
            data = os.read(fd, 512)
        except OSError:
            data = b""
        if not data:
            log.info("parent gone: stopping")
            loop.remove_reader(fd)
            loop.stop()

    loop.add_reader(fd, _on_parent)


def announce(endpoint: str) -> None:
    """Tell whoever started us where we listen (one line on stdout)."""
    sys.stdout.write(f"LUCIDITY-READY {endpoint}\n")
    sys.stdout.flush()
    if not os.isatty(1):
        # Whoever started us may read this pipe only for that line (the
        # embedded cluster does): anything written to it later could fill
        # it and block us. Stray writes go to stderr, our log.
        os.dup2(2, 1)
