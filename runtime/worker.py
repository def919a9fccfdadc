"""A worker process: runs one job at a time for its node.

Started by the node ahead of time (`python -m lucidity.worker ENDPOINT`), it
connects back, says READY, and runs each RUN it is given: import the job by
reference, unpickle the arguments, call, pickle the result or the error. It
is also a client (nested jobs), and tells its node when user code blocks on
a child job so the node can lend its slot out. It exits when its node's end
of the stdin pipe closes, whatever the user code is doing.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import zmq

from lucidity import protocol as p
from lucidity.handle import set_blocking_hooks

__all__ = ["main", "resolve"]

log = logging.getLogger(__name__)

_cache: dict[str, Callable[..., Any]] = {}


def resolve(target: str) -> Callable[..., Any]:
    """Import `"pkg.mod:func"` (cached)."""
    func = _cache.get(target)
    if func is None:
        module_name, _, qualname = target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        func = obj
        _cache[target] = func
    return func


def _watch_stdin() -> None:
    # Blocks on the pipe from the node; EOF means the node is gone.
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os._exit(0)


class _Blocking:
    """Counts user threads blocked on child jobs; tells the node at 0<->1."""

    def __init__(self, sock: zmq.Socket[Any], lock: threading.Lock) -> None:
        self.sock = sock
        self.lock = lock
        self.depth = 0

    def blocked(self) -> None:
        with self.lock:
            self.depth += 1
            if self.depth == 1:
                self.sock.send(p.encode(p.MsgType.BLOCKED))

    def unblocked(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                self.sock.send(p.encode(p.MsgType.UNBLOCKED))


def _run(header: dict[str, Any], payload: list[Any]) -> tuple[bool, list[Any]]:
    try:
        func = resolve(str(header["target"]))
        args = p.loads_payload(payload)
        result = func(*args)
        return True, p.dumps_payload(result)
    except BaseException as exc:  # noqa: B036 - even SystemExit is the job's result
        return False, p.dumps_error(exc)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    endpoint = argv[0]
    threading.Thread(target=_watch_stdin, daemon=True, name="node-watch").start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.IDENTITY, f"w{os.getpid()}".encode())
    sock.connect(endpoint)
    lock = threading.Lock()
    hooks = _Blocking(sock, lock)
    set_blocking_hooks((hooks.blocked, hooks.unblocked))
    sock.send(p.encode(p.MsgType.READY, {"pid": os.getpid()}))
    while True:
        frames = sock.recv_multipart(copy=False)
        try:
            msg = p.decode(frames[0].buffer)
        except p.FrameError as exc:
            log.warning("dropped a bad frame from the node: %s", exc)
            continue
        if msg.type == p.MsgType.STOP:
            break
        if msg.type != p.MsgType.RUN:
            continue
        ok, out = _run(msg.header, [f.buffer for f in frames[1:]])
        head = p.encode(p.MsgType.DONE, {"key": msg.header.get("key"), "ok": ok})
        with lock:
            sock.send_multipart([head, *out], copy=False)
    sock.close(0)
    os._exit(0)


if __name__ == "__main__":
    main()
