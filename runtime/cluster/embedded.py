"""The embedded cluster: real daemons on loopback, owned by one process.

With no cluster configured, the first job starts a control daemon and two
node daemons as child processes. Each daemon's stdin is a pipe whose other
end only this process holds: when this process exits, however it exits, the
pipe closes and the daemons stop (and their workers with them).

Each node runs on its own share of the CPUs (`--cpus`), as on a machine of
its own: a job's hops between a node and its worker then stay on one CPU.
On the 2-CPU VMs this was measured on, a wake-up across CPUs costs about
35 us and one on the same CPU under 2 us: a `_remote` round trip went from
about 365 to 250 us, nested throughput rose about 25% and fanout about 20%
(benchmarks/FASTPATH.md).

Only this process tree can use it: the daemons listen on ipc sockets in a
private (0700) temporary folder, so another local user cannot even connect,
let alone submit jobs. The folder is held like the shared-memory ones
(`lucidity.cluster.wire._shm.make_socket_dir`): one left by an app that was SIGKILLed, or
by a fork child that `os._exit`ed, is removed when the next cluster starts.
That is as private as CURVE on loopback TCP, without its cost: keys made a
`_remote` round trip about 50 us (22%) slower (benchmarks/curve_cost.py). So
its daemons run --insecure, and its nodes tell their workers
(LUCIDITY_INSECURE) to use no keys either.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from lucidity.cluster._cpus import available, format_cpus, split
from lucidity.cluster.security import KEYS_ENV
from lucidity.cluster.wire import _shm
from lucidity.errors import ClusterError

__all__ = ["DaemonProcess", "LocalCluster", "start_embedded", "start_private_node"]

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The daemons' workers import jobs by name: give them this process's path.
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.pop("LUCIDITY_CONTROL", None)
    env.pop("LUCIDITY_NODE", None)
    env.pop(KEYS_ENV, None)
    return env


def _log_level() -> str:
    # Embedded daemons share the app's stderr: only what needs attention.
    return os.environ.get("LUCIDITY_LOG_LEVEL", "WARNING")


@dataclass
class DaemonProcess:
    """A daemon we started; `endpoint` is where it listens."""

    proc: subprocess.Popen[bytes]
    endpoint: str = ""

    def stop(self, timeout: float = 3.0) -> None:
        if self.proc.poll() is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the daemon sees EOF and stops cleanly
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def spawn_daemon(args: list[str], env: dict[str, str]) -> DaemonProcess:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lucidity",
            "--log-level",
            _log_level(),
            *args,
            "--parent-pipe",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    return DaemonProcess(proc)


def wait_ready(daemons: list[DaemonProcess], timeout: float = READY_TIMEOUT_S) -> None:
    """Read each daemon's `LUCIDITY-READY <endpoint>` line (bounded wait)."""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytes] = {}
    for d in daemons:
        assert d.proc.stdout is not None
        sel.register(d.proc.stdout, selectors.EVENT_READ, d)
        buffers[id(d)] = b""
    try:
        waiting = len(daemons)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(
                    f"embedded cluster: a daemon did not start within {timeout:.0f} s"
                )
            for key, _ in sel.select(left):
                d = key.data
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    sel.unregister(key.fileobj)
                    raise ClusterError(
                        f"embedded cluster: daemon {' '.join(d.proc.args[3:])!r} "
                        f"exited with {d.proc.wait()} before it was ready"
                    )
                buffers[id(d)] += chunk
                line, nl, _ = buffers[id(d)].partition(b"\n")
                if nl:
                    d.endpoint = line.decode().split(" ", 1)[1].strip()
                    sel.unregister(key.fileobj)
                    waiting -= 1
    finally:
        sel.close()


@dataclass
class LocalCluster:
    """A control (optional) and nodes started by this process."""

    control: str | None
    nodes: list[str]
    daemons: list[DaemonProcess] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)
    # The private folder of the daemons' ipc sockets, removed when they stop.
    folder: str | None = None

    def stop(self) -> None:
        if os.getpid() != self.pid:
            return
        for d in reversed(self.daemons):
            if d.proc.stdin is not None and not d.proc.stdin.closed:
                d.proc.stdin.close()
        for d in reversed(self.daemons):
            d.stop()
        _shm.remove_dir(self.folder)


def _private_folder() -> str:
    try:
        return _shm.make_socket_dir()
    except OSError as exc:
        raise ClusterError(
            f"embedded cluster: cannot make a folder for its sockets: {exc}"
        ) from None


def _start(
    folder: str, control: list[str] | None, nodes: list[list[str]]
) -> LocalCluster:
    """Start a control (if `control` has its arguments) and the nodes."""
    env = _child_env()
    cluster = LocalCluster(None, [], [], folder=folder)
    try:
        if control is not None:
            ctl = spawn_daemon(control, env)
            cluster.daemons.append(ctl)
            wait_ready([ctl])
            cluster.control = ctl.endpoint
            nodes = [[*args, "--control", ctl.endpoint] for args in nodes]
        node_daemons = [spawn_daemon(args, env) for args in nodes]
        cluster.daemons.extend(node_daemons)
        wait_ready(node_daemons)
    except BaseException:
        cluster.stop()
        raise
    cluster.nodes = [d.endpoint for d in node_daemons]
    return cluster


def start_embedded(nodes: int = 2, workers: int | None = None) -> LocalCluster:
    """A control and `nodes` nodes on private ipc sockets, gone when this
    process exits. Each node gets its share of this process's CPUs (when
    there are at least as many CPUs as nodes), and by default a worker per
    CPU of its share."""
    cpus = sorted(available())
    shares = split(cpus, nodes) if nodes > 1 else None
    folder = _private_folder()
    args = []
    for i in range(nodes):
        node = ["node", "--bind", f"ipc://{folder}/node-{i}", "--insecure"]
        if shares:
            node += ["--cpus", format_cpus(shares[i])]
            count = workers or len(shares[i])
        else:
            count = workers or max(1, len(cpus) // nodes)
        args.append([*node, "--workers", str(count)])
    # No keys (--insecure): private by the folder (no warning for that).
    control = ["control", "--bind", f"ipc://{folder}/control", "--insecure"]
    return _start(folder, control, args)


def start_private_node(workers: int | None = None) -> LocalCluster:
    """A node of this process's own, in no cluster: where `_local` jobs run."""
    workers = workers or (os.cpu_count() or 2)
    folder = _private_folder()
    return _start(
        folder,
        None,
        [
            [
                "node",
                "--standalone",
                "--bind",
                f"ipc://{folder}/node",
                "--workers",
                str(workers),
                "--insecure",
            ]
        ],
    )
