"""A worker process: runs one job at a time for its node.

Started by the node ahead of time (`python -m lucidity.cluster.node.worker FD`, FD its end
of a socketpair with the node: `lucidity.cluster.wire._link`), it says READY and runs each
RUN it is given: import the job by reference, unpickle the arguments, call,
pickle the result or the error. It is also a client (nested jobs), and
tells its node when user code blocks on a child job so the node can lend its
slot out. It exits when its node's end of the stdin pipe closes, whatever the
user code is doing.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any

from lucidity.cluster.node.limits import NO_LIMITS, Limits
from lucidity.cluster.wire import _link, _shm
from lucidity.cluster.wire import protocol as p
from lucidity.handle import set_blocking_hooks, set_job_depth, waited_s

__all__ = ["main", "resolve"]

log = logging.getLogger(__name__)

_cache: dict[str, Callable[..., Any]] = {}
_bundle_paths: list[str] = []
_SHIPS_ONLY = "lucidity ships only the job's own package"


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


# DONE headers, by (ok, retire): made once, like BLOCKED/UNBLOCKED.
_DONE = {
    (ok, retire): p.encode(p.MsgType.DONE, {"ok": ok, "retire": retire})
    for ok in (False, True)
    for retire in (False, True)
}
_BLOCKED = p.encode(p.MsgType.BLOCKED)
_UNBLOCKED = p.encode(p.MsgType.UNBLOCKED)


class _Blocking:
    """Counts user threads blocked on child jobs; tells the node at 0<->1."""

    def __init__(self, sock: socket.socket, lock: threading.Lock) -> None:
        self.sock = sock
        self.lock = lock
        self.depth = 0

    def blocked(self) -> None:
        with self.lock:
            self.depth += 1
            if self.depth == 1:
                _link.send(self.sock, [_BLOCKED])

    def unblocked(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                _link.send(self.sock, [_UNBLOCKED])


def _failure(exc: BaseException, limits: Limits) -> tuple[list[Any], bool]:
    """The error payload of a failed job, and whether this worker must retire."""
    hit = limits.translate(exc)
    if hit is not None:
        return p.dumps_error(hit), True
    if type(exc) is ModuleNotFoundError and _SHIPS_ONLY not in str(exc):
        node = os.environ.get("LUCIDITY_NODE_ID", "?")
        missing = ModuleNotFoundError(
            f"{exc} on node {node}: {_SHIPS_ONLY}; "
            "install third-party packages on every node",
            name=exc.name,
        )
        missing.__traceback__ = exc.__traceback__
        return p.dumps_error(missing), False
    return p.dumps_error(exc), False


def _run(header: dict[str, Any], payload: list[Any]) -> tuple[bool, list[Any], bool]:
    """Run one job: (ok, payload frames, whether this worker must retire)."""
    target = str(header["target"])
    bundle_path = header.get("bundle_path")
    if bundle_path is not None and bundle_path not in _bundle_paths:
        # A worker serves one bundle: the node never sends it a second one.
        _bundle_paths.append(str(bundle_path))
        sys.path.insert(0, str(bundle_path))
        importlib.invalidate_caches()
    memory, fuel = header.get("memory"), header.get("fuel")
    limits = (
        NO_LIMITS if memory is None and fuel is None else Limits(target, memory, fuel)
    )
    set_job_depth(int(header.get("depth", 0)))
    try:
        func = None if target.startswith(p.PICKLED_TARGET) else resolve(target)
        args, reply = p.loads_request(payload, bool(header.get("shm")))
        kwargs: dict[str, Any] = {}
        if "kw" in header:  # keyword arguments came with the positional ones
            args, kwargs = args
        if func is None:
            func, args = args  # a pickled callable, then its arguments
        batch = header.get("batch")
        if batch is not None:
            return _run_batch(func, args, kwargs, batch == "single", limits, reply)
        if limits is NO_LIMITS:
            result = func(*args, **kwargs)  # nothing to arm (most jobs)
            if type(result) is CoroutineType:
                result = _complete(result)
        else:
            with limits:
                result = func(*args, **kwargs)
                if type(result) is CoroutineType:
                    result = _complete(result)
            if limits.hit is not None:  # the job swallowed the limit's exception
                raise limits.hit
        return True, p.dumps_payload(result, reply), False
    except BaseException as exc:  # noqa: B036 - even SystemExit is the job's result
        frames, retire = _failure(exc, limits)
        return False, frames, retire


def _complete(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The value of an `async def` job: its coroutine run to completion in an
    event loop of its own, as `asyncio.run` does (a job's tasks and async
    generators do not outlive it)."""
    import asyncio  # here: only `async def` jobs need it (~20 ms to import)

    return asyncio.run(coroutine)


def _run_batch(
    func: Callable[..., Any],
    items: list[Any],
    kwargs: dict[str, Any],
    single: bool,
    limits: Limits,
    reply: _shm.Outbound | None,
) -> tuple[bool, list[Any], bool]:
    """Run a fanout chunk, item after item, stopping at the first failure.

    The result is (values, failure, seconds, node, seconds waited): a value
    per item that ran, for the item that failed (index, error payload), and
    how long the items waited on nested jobs. Limits hold per item: fuel is
    a budget for each one, and a limit hit retires the worker.
    """
    values: list[Any] = []
    fail: tuple[int, Any] | None = None
    retire = False
    # Without keyword arguments (most fanouts) an item's call is the plain
    # call: `**{}` costs each of them a dict.
    call = functools.partial(func, **kwargs) if kwargs else func
    started, waited = time.perf_counter(), waited_s()
    with limits:
        for index, args in enumerate(items):
            try:
                limits.rearm()
                value = call(args) if single else call(*args)
                if type(value) is CoroutineType:
                    value = _complete(value)
                values.append(value)
                if limits.hit is not None:
                    raise limits.hit
            except BaseException as exc:  # noqa: B036 - the item's result
                frames, retire = _failure(exc, limits)
                fail = (index, frames[0])
                break
    elapsed, waited = time.perf_counter() - started, waited_s() - waited
    node = os.environ.get("LUCIDITY_NODE_ID", "?")
    result = (values, fail, elapsed, node, waited)
    return True, p.dumps_payload(result, reply), retire


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # closed or replaced by the job: nothing of ours to flush


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    # A pipe its node reads: a job's lines go out as it prints them.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    threading.Thread(target=_watch_stdin, daemon=True, name="node-watch").start()
    reader = _link.Reader(sock)
    lock = threading.Lock()
    hooks = _Blocking(sock, lock)
    set_blocking_hooks((hooks.blocked, hooks.unblocked))
    try:
        _link.send(sock, [p.encode(p.MsgType.READY, {"pid": os.getpid()})])
        while True:
            frames = _link.recv(reader)
            try:
                msg = p.decode(frames[0])
            except p.FrameError as exc:
                log.warning("dropped a bad frame from the node: %s", exc)
                continue
            if msg.type == p.MsgType.STOP:
                break
            if msg.type != p.MsgType.RUN:
                continue
            ok, out, retire = _run(msg.header, frames[1:])
            _flush_output()  # the node passes a job's lines on before its result
            with lock:
                _link.send(sock, [_DONE[ok, retire], *out])
            if retire:
                # After a limit hit the heap's state is unknown: a fresh worker
                # takes this one's place.
                break
    except (EOFError, OSError):
        pass  # the node is gone (its end of the link closed)
    # What was sent before this stays readable by the node: no linger needed.
    sock.close()
    os._exit(0)


if __name__ == "__main__":
    main()
