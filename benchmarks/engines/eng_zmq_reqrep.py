"""pyzmq REQ -> REP server process (one hop): the payload target's baseline."""

from __future__ import annotations

from typing import Any

from engines import common, zmq_procs
from engines.zmq_procs import PAIR

NAME = "zmq_reqrep"
LABEL = "raw pyzmq REQ/REP (1 server process)"
STARTUP_CODE = f"""
import zmq
from engines import zmq_procs
addr = f"tcp://127.0.0.1:{{zmq_procs.free_port()}}"
p = zmq_procs.start(zmq_procs.rep_worker, addr, True)
s = zmq.Context().socket(zmq.REQ); s.linger = 0; s.connect(addr)
s.send_multipart([b"s", zmq_procs.PAIR.pack(1, 3)])
print("{common.STARTUP_MARKER}", zmq_procs.PAIR.unpack(s.recv_multipart()[1])[1], flush=True)
p.kill()
"""


class Engine:
    def __init__(self, sizes: common.Sizes) -> None:
        self.sizes = sizes
        self.procs: list[Any] = []

    def setup(self) -> None:
        import zmq

        addr = f"tcp://127.0.0.1:{zmq_procs.free_port()}"
        self.procs.append(zmq_procs.start(zmq_procs.rep_worker, addr, True))
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.linger = 0
        self.sock.rcvtimeo = 30_000
        self.sock.connect(addr)

    def teardown(self) -> None:
        zmq_procs.teardown(self.sock, self.ctx, self.procs)

    def _rt16(self, x: int) -> int:
        self.sock.send_multipart([b"s", PAIR.pack(x, x)])
        return PAIR.unpack(self.sock.recv_multipart()[1])[1]

    def latency(self) -> dict[str, Any]:
        s = self.sizes
        data = common.measure_latency(self._rt16, s.latency_n, s.latency_warmup)
        data["how"] = "16 B message, one server process"
        return data

    fanout_na = "REQ/REP cannot pipeline"
    nested_na = "no nesting"

    def payload(self) -> dict[str, Any]:
        import numpy as np

        def echo(arr: Any) -> Any:
            self.sock.send_multipart([b"e", arr], copy=False)
            frames = self.sock.recv_multipart(copy=False)
            return np.frombuffer(frames[1].buffer, dtype=np.float64)

        data = common.measure_payload(echo, self.sizes.payload_reps)
        data["how"] = "array buffer as one frame, copy=False"
        return data
