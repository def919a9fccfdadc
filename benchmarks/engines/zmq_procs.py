"""The raw pyzmq processes of the baselines: a broker and REP workers.

Started with the `fork` start method before the client makes any zmq context;
every process is ended by pid in `stop_all`.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import struct
from typing import Any

PAIR = struct.Struct("<qq")  # 16 B: job id, value


def rep_worker(addr: str, bind: bool) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.linger = 0
    sock.sndhwm = sock.rcvhwm = 0  # no silent drops while pipelining
    if bind:
        sock.bind(addr)
    else:
        sock.connect(addr)
    while True:
        frames = sock.recv_multipart(copy=False)
        kind = frames[0].bytes
        if kind == b"s":  # 16 B: id, x -> id, x*x
            jid, x = PAIR.unpack(frames[1].bytes)
            sock.send_multipart([b"s", PAIR.pack(jid, x * x)])
        elif kind == b"p":  # pickle((id, fn, args)) -> pickle((id, result))
            jid, fn, args = pickle.loads(frames[1].buffer)
            sock.send_multipart([b"p", pickle.dumps((jid, fn(*args)), protocol=5)])
        elif kind == b"e":  # echo the data frame back, no copy on our side
            sock.send_multipart([b"e", frames[1]], copy=False)
        else:
            sock.send_multipart([b"?"])


def broker(front: str, back: str) -> None:
    import zmq

    ctx = zmq.Context()
    f = ctx.socket(zmq.ROUTER)
    b = ctx.socket(zmq.DEALER)
    f.linger = b.linger = 0
    for s in (f, b):
        s.sndhwm = s.rcvhwm = 0  # a ROUTER drops silently at its HWM
    f.bind(front)
    b.bind(back)
    zmq.proxy(f, b)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(target: Any, *args: Any) -> mp.Process:
    ctx = mp.get_context("fork")
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def stop_all(procs: list[mp.Process]) -> None:
    from engines.common import kill_tree

    for proc in procs:
        if proc.pid is not None:
            kill_tree(proc.pid, grace=1.0)
        proc.join(2)


def teardown(sock: Any, ctx: Any, procs: list[mp.Process]) -> None:
    """Close the engine's socket and context, then stop its processes."""
    try:
        sock.close(0)
        ctx.term()
    finally:
        stop_all(procs)
