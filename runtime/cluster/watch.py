"""`lucidity status --watch`: a live view of the cluster, like `top`.

Every interval it asks control for the node list (each node's last
heartbeat: workers, processes, busy, queued, jobs finished, memory) and
shows a row per node, with the jobs per second each finished over the last
RATE_WINDOW_S. On a terminal the view is redrawn in place; otherwise each
refresh is printed as plain lines under a time stamp (for a log or a pipe).
Also here: what a node measures of itself for the view (`rss_bytes`).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from typing import Any, TextIO

import zmq

from lucidity.cluster import security as sec
from lucidity.cluster.wire import protocol as p
from lucidity.errors import AuthenticationError

__all__ = ["RATE_WINDOW_S", "Asker", "Rates", "render", "rss_bytes", "watch"]

RATE_WINDOW_S = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE")
# Home the cursor and clear the screen: each view replaces the last.
_REDRAW = "\x1b[H\x1b[2J"


def rss_bytes(pids: list[int]) -> int:
    """The resident memory of these processes (gone ones count nothing)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


class Rates:
    """Jobs per second per node, from the finished counts it reports."""

    def __init__(self) -> None:
        self.seen: dict[str, collections.deque[tuple[float, int]]] = {}

    def update(self, node: str, done: int, now: float) -> float | None:
        history = self.seen.setdefault(node, collections.deque())
        if history and done < history[-1][1]:
            history.clear()  # a counter that went back: another process
        history.append((now, done))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_S:
            history.popleft()
        first_t, first = history[0]
        if now - first_t <= 0:
            return None
        return (done - first) / (now - first_t)


class Asker:
    """One connection to control, asked for its node list each refresh."""

    def __init__(self, control: str, keys: sec.Keys | None, timeout: float) -> None:
        self.control = control
        self.timeout = timeout
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if keys is not None:
            sec.secure_client(self.sock, keys)
        sec.set_max_message(self.sock, sec.client_max_message())
        self.refused: list[AuthenticationError] = []
        self.handshakes = sec.HandshakeWatch(
            self.sock, control, keys, self.refused.append
        )
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.handshakes.monitor, zmq.POLLIN)
        self.sock.connect(control)

    def __call__(self) -> list[dict[str, Any]] | str:
        """The nodes, or why there is no answer; raises AuthenticationError."""
        # An answer to an earlier question that came too late is not this one's.
        while self.sock.poll(0):
            self.sock.recv()
        self.sock.send(p.encode(p.MsgType.SUBSCRIBE, {"once": True}), zmq.NOBLOCK)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.refused:
                raise self.refused[0]
            left = deadline - time.monotonic()
            if left <= 0:
                return (
                    f"no answer from control at {self.control} within "
                    f"{self.timeout * 1000:.0f} ms (is it running?)"
                )
            ready = dict(self.poller.poll(int(left * 1000) + 1))
            if self.handshakes.monitor in ready:
                self.handshakes.on_event()
            if self.sock in ready:
                try:
                    msg = p.decode(self.sock.recv())
                except p.FrameError as exc:
                    return f"a bad answer from control at {self.control}: {exc}"
                nodes = msg.header.get("nodes", [])
                return [n for n in nodes if isinstance(n, dict)]

    def close(self) -> None:
        self.handshakes.close()
        self.sock.close(0)
        self.ctx.term()


def _mib(value: Any) -> str:
    return f"{int(value) / 2**20:.0f} MiB" if isinstance(value, int) else "-"


def render(nodes: list[dict[str, Any]], rates: Rates, now: float) -> list[str]:
    """The view's lines: a table of the nodes, then a total."""
    rows: list[tuple[str, ...]] = [
        ("NODE", "ADDRESS", "WORKERS", "PROCS", "BUSY", "QUEUED", "JOBS/S", "MEMORY")
    ]
    total_rate = 0.0
    for n in sorted(nodes, key=lambda n: str(n.get("addr"))):
        done = n.get("done")
        rate = (
            rates.update(str(n.get("id")), done, now) if isinstance(done, int) else None
        )
        total_rate += rate or 0.0
        rows.append(
            (
                str(n.get("id", "")),
                str(n.get("addr", "")),
                str(n.get("workers", "")),
                str(n.get("procs", "")),
                str(n.get("busy", "")),
                str(n.get("queued", "")),
                "-" if rate is None else f"{rate:.1f}",
                _mib(n.get("mem")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]
    busy = sum(int(n.get("busy", 0)) for n in nodes)
    slots = sum(int(n.get("workers", 0)) for n in nodes)
    lines.append(
        f"{len(nodes)} node(s), {busy} of {slots} workers busy, "
        f"{total_rate:.1f} jobs/s"
    )
    return lines


def watch(
    ask: Any,
    control: str,
    interval: float,
    count: int | None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Show the view every `interval` seconds (`count` times, or until
    Ctrl-C). `ask()` returns the node list, or an error text (no answer),
    or raises to end the watch (a refused handshake)."""
    out = out or sys.stdout
    stop = stop or threading.Event()
    tty = out.isatty()
    rates = Rates()
    shown = 0
    try:
        while count is None or shown < count:
            started = time.monotonic()
            answer = ask()
            stamp = time.strftime("%H:%M:%S")
            head = f"lucidity status --watch: control at {control}, {stamp}"
            if isinstance(answer, str):
                lines = [head, answer]
            else:
                lines = [head, *render(answer, rates, time.monotonic())]
            if tty:
                out.write(_REDRAW + "\n".join(lines) + "\n")
            else:
                out.write("\n".join(lines) + "\n\n")
            out.flush()
            shown += 1
            if count is not None and shown >= count:
                break
            # Until the next refresh, or until `stop` is set (a caller ending
            # the view from another thread), whichever comes first.
            if stop.wait(max(0.0, interval - (time.monotonic() - started))):
                break
    except KeyboardInterrupt:
        pass
    return 0
