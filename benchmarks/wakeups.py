"""What one round trip between two processes costs, by link and by CPU placement.

Run from this folder: `python wakeups.py [N]`. A parent and a forked child
bounce a 70-byte message N times (after 200 untimed); the table gives the
median round trip for:

- a ZeroMQ PAIR over ipc (each message also wakes an I/O thread on each side),
  as the node and its workers talked before stop 9;
- a Unix socketpair (a send wakes the reader directly), as they talk now
  (`lucidity.cluster.wire._link`);
- the socketpair with both processes on one CPU, and on two different CPUs.

It is why the node-worker link is a socketpair and why the embedded
cluster gives each node its own CPUs (`lucidity node --cpus`): on the
2-CPU VMs these were measured on, a wake-up across CPUs costs about 35 us,
one on the same CPU about 2 us.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import zmq

MSG = b"h" * 70
WARMUP = 200


def _bounce(
    n: int,
    child_setup: Callable[[], None],
    parent_link: Callable[[], tuple[Callable[[bytes], None], Callable[[], bytes]]],
    cpus: tuple[int | None, int | None] = (None, None),
) -> float:
    """Median round trip in us; the child echoes what it reads."""
    pid = os.fork()
    if pid == 0:
        try:
            if cpus[1] is not None:
                os.sched_setaffinity(0, {cpus[1]})
            child_setup()
        finally:
            os._exit(0)
    before = os.sched_getaffinity(0)
    try:
        if cpus[0] is not None:
            os.sched_setaffinity(0, {cpus[0]})
        send, recv = parent_link()
        samples = []
        for i in range(n + WARMUP):
            t0 = time.perf_counter()
            send(MSG)
            recv()
            if i >= WARMUP:
                samples.append(time.perf_counter() - t0)
        send(b"")  # the child stops
    finally:
        os.sched_setaffinity(0, before)
        os.waitpid(pid, 0)
    return statistics.median(samples) * 1e6


def zmq_ipc(n: int) -> float:
    folder = tempfile.mkdtemp(prefix="wakeups-")
    addr = f"ipc://{folder}/pair"

    def child() -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.PAIR)
        s.linger = 0
        s.connect(addr)
        while True:
            frame = s.recv()
            if not frame:
                break
            s.send(frame)
        s.close()
        ctx.term()

    ctx = zmq.Context()
    s = ctx.socket(zmq.PAIR)
    s.linger = 0
    s.rcvtimeo = 10_000
    s.bind(addr)
    try:
        return _bounce(n, child, lambda: (s.send, s.recv))
    finally:
        s.close()
        ctx.term()
        os.unlink(f"{folder}/pair")
        os.rmdir(folder)


def pair(n: int, cpus: tuple[int | None, int | None] = (None, None)) -> float:
    a, b = socket.socketpair()

    def child() -> None:
        a.close()
        while True:
            data = b.recv(65536)
            if not data or data == b"x":
                break
            b.sendall(data)

    def parent() -> tuple[Callable[[bytes], None], Callable[[], bytes]]:
        b.close()
        a.settimeout(10)
        return (lambda m: a.sendall(m or b"x")), (lambda: a.recv(65536))

    try:
        return _bounce(n, child, parent, cpus)
    finally:
        a.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    cpus = sorted(os.sched_getaffinity(0))
    rows = [("ZeroMQ PAIR, ipc", zmq_ipc(n)), ("socketpair", pair(n))]
    rows.append(("socketpair, one CPU", pair(n, (cpus[0], cpus[0]))))
    if len(cpus) > 1:
        rows.append(("socketpair, two CPUs", pair(n, (cpus[0], cpus[1]))))
    print(f"| link ({n} round trips, 70 B) | median round trip us |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.0f} |")


if __name__ == "__main__":
    main()
