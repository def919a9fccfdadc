"""The floor: pyzmq DEALER -> ROUTER/DEALER broker -> 2 REP worker processes."""

from __future__ import annotations

import pickle
import time
from typing import Any

from engines import common, zmq_procs
from engines.tasks import square
from engines.zmq_procs import PAIR

NAME = "raw_zmq"
LABEL = "raw pyzmq DEALER->ROUTER/DEALER->2xREP"
STARTUP_CODE = f"""
import multiprocessing as mp, zmq
from engines import zmq_procs
f, b = zmq_procs.free_port(), zmq_procs.free_port()
front, back = f"tcp://127.0.0.1:{{f}}", f"tcp://127.0.0.1:{{b}}"
procs = [zmq_procs.start(zmq_procs.broker, front, back)]
procs += [zmq_procs.start(zmq_procs.rep_worker, back, False) for _ in range(2)]
s = zmq.Context().socket(zmq.DEALER); s.linger = 0; s.connect(front)
s.send_multipart([b"", b"s", zmq_procs.PAIR.pack(1, 3)])
r = s.recv_multipart()
print("{common.STARTUP_MARKER}", zmq_procs.PAIR.unpack(r[2])[1], flush=True)
for p in procs: p.kill()
"""
WINDOW = 1000


class Engine:
    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes
        self.procs: list[Any] = []
        self.extras: dict[str, Any] = {}

    def setup(self) -> None:
        import zmq

        front = f"tcp://127.0.0.1:{zmq_procs.free_port()}"
        back = f"tcp://127.0.0.1:{zmq_procs.free_port()}"
        self.procs.append(zmq_procs.start(zmq_procs.broker, front, back))
        for _ in range(2):
            self.procs.append(zmq_procs.start(zmq_procs.rep_worker, back, False))
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndhwm = self.sock.rcvhwm = 0
        self.sock.rcvtimeo = 30_000
        self.sock.connect(front)
        # Both workers answer before we measure.
        seen = set()
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            self._send_pickle(0, _whoami, ())
            seen.add(pickle.loads(self.sock.recv_multipart()[2])[1])

    def teardown(self) -> None:
        zmq_procs.teardown(self.sock, self.ctx, self.procs)

    def _send_pickle(self, jid: int, fn: Any, args: tuple[Any, ...]) -> None:
        self.sock.send_multipart([b"", b"p", pickle.dumps((jid, fn, args), protocol=5)])

    def _rt16(self, x: int) -> int:
        self.sock.send_multipart([b"", b"s", PAIR.pack(x, x)])
        return PAIR.unpack(self.sock.recv_multipart()[2])[1]

    def _rt_pickle(self, x: int) -> int:
        self._send_pickle(x, square, (x,))
        return pickle.loads(self.sock.recv_multipart()[2])[1]

    def latency(self) -> dict[str, Any]:
        s = self.sizes
        data = common.measure_latency(self._rt16, s.latency_n, s.latency_warmup)
        pk = common.measure_latency(self._rt_pickle, s.latency_n, s.latency_warmup)
        data["how"] = "16 B message (id, x) -> (id, x*x)"
        data["extra"] = {
            "pickle(fn,args) mini engine p50 us": pk["p50_us"],
            "pickle(fn,args) mini engine p99 us": pk["p99_us"],
        }
        return data

    def _pipelined(self, n: int, use_pickle: bool) -> list[int]:
        out = [0] * n
        sent = got = 0
        sock = self.sock
        while got < n:
            while sent < n and sent - got < WINDOW:
                if use_pickle:
                    self._send_pickle(sent, square, (sent,))
                else:
                    sock.send_multipart([b"", b"s", PAIR.pack(sent, sent)])
                sent += 1
            frames = sock.recv_multipart()
            if use_pickle:
                jid, val = pickle.loads(frames[2])
            else:
                jid, val = PAIR.unpack(frames[2])
            out[jid] = val
            got += 1
        return out

    def fanout(self) -> dict[str, Any]:
        self._pipelined(1000, False)
        data = common.measure_fanout(
            lambda n: self._pipelined(n, False), self.sizes.fanout_n
        )
        pk = common.measure_fanout(
            lambda n: self._pipelined(n, True), self.sizes.fanout_n
        )
        data["how"] = (
            f"16 B messages pipelined, {WINDOW} in flight, replies matched by id"
        )
        data["extra"] = {"pickle(fn,args) mini engine jobs/s": pk["per_s"]}
        return data

    nested_na = "no nesting in a raw socket chain"

    def payload(self) -> dict[str, Any]:
        import numpy as np

        def echo(arr: Any) -> Any:
            self.sock.send_multipart([b"", b"e", arr], copy=False)
            frames = self.sock.recv_multipart(copy=False)
            return np.frombuffer(frames[2].buffer, dtype=np.float64)

        data = common.measure_payload(echo, self.sizes.payload_reps)
        data["how"] = "array buffer as one frame through the broker, copy=False"
        return data


def _whoami() -> int:
    import os

    return os.getpid()
