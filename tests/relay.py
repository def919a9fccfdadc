"""A TCP relay for tests: a client's link to a node that a test can cut and
restore (used by test_semantics' async_set_retry_interval_ms test). A helper
module, as `waits` is: one thread per relay, loopback only, every wait bounded.
"""

from __future__ import annotations

import selectors
import socket
import threading


class Relay:
    """A TCP relay to a node: a client's link to its node, which the test can
    cut and restore.

    `cut()` closes every connection through it; until `restore()`, new
    connections either wait unanswered in the listen backlog (`"hold"`: the
    far end is unreachable) or are accepted and closed at once (`"close"`:
    something in between answers for a node that is not there).
    """

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.mode = "up"
        self.peer: dict[socket.socket, socket.socket] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._orders: list[tuple[str, threading.Event]] = []
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True, name="relay")
        self._thread.start()

    def _order(self, what: str) -> None:
        done = threading.Event()
        self._orders.append((what, done))
        self._wake_w.send(b"x")
        assert done.wait(5), f"the relay did not {what}"

    def cut(self, mode: str = "hold") -> None:
        assert mode in ("hold", "close")
        self._order(mode)

    def restore(self) -> None:
        self._order("up")

    def close(self) -> None:
        self._order("end")
        self._thread.join(5)

    def _drop(self, s: socket.socket) -> None:
        for x in (s, self.peer.pop(s, None)):
            if x is not None:
                self.peer.pop(x, None)
                self._sel.unregister(x)
                x.close()

    def _obey(self, what: str) -> bool:
        """Carry out one order; False once the relay has ended."""
        if what != "up":
            for x in list(self.peer):
                if x in self.peer:
                    self._drop(x)
        listening = self.listener in self._sel.get_map()
        if what == "hold" and listening:
            self._sel.unregister(self.listener)
        elif what != "hold" and not listening:
            self._sel.register(self.listener, selectors.EVENT_READ)
        self.mode = what
        if what == "end":
            self._sel.close()
            for x in (self.listener, self._wake_r, self._wake_w):
                x.close()
            return False
        return True

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s is self._wake_r:
                    s.recv(64)
                    while self._orders:
                        what, done = self._orders.pop(0)
                        going = self._obey(what)
                        done.set()
                        if not going:
                            return
                elif s is self.listener:
                    conn, _ = s.accept()
                    if self.mode != "up":
                        conn.close()
                        continue
                    node = socket.create_connection(self.target, timeout=5)
                    node.settimeout(None)
                    self.peer[conn], self.peer[node] = node, conn
                    self._sel.register(conn, selectors.EVENT_READ)
                    self._sel.register(node, selectors.EVENT_READ)
                elif s in self.peer:
                    try:
                        data = s.recv(65536)
                        if data:
                            self.peer[s].sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(s)
