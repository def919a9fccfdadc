"""The embedded cluster: real daemons on loopback, owned by one process.

With no cluster configured, the first job starts a control daemon and two
node daemons as child processes. Each daemon's stdin is a pipe whose other
end only this process holds: when this process exits, however it exits, the
pipe closes and the daemons stop (and their workers with them).

Only this process tree can use it: it runs with throwaway keys made in a
private (0700) temporary folder, known to this process and passed to the
daemons (and by the nodes to their workers), so another local user who finds
the loopback ports cannot submit jobs.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from lucidity.errors import ClusterError
from lucidity.security import KEYS_ENV, Keys, ephemeral_keys

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
    keys: Keys | None = None

    def stop(self) -> None:
        if os.getpid() != self.pid:
            return
        for d in reversed(self.daemons):
            if d.proc.stdin is not None and not d.proc.stdin.closed:
                d.proc.stdin.close()
        for d in reversed(self.daemons):
            d.stop()
        if self.keys is not None:
            shutil.rmtree(self.keys.path, ignore_errors=True)


def _default_workers(nodes: int) -> int:
    return max(1, (os.cpu_count() or 2) // nodes)


def start_embedded(nodes: int = 2, workers: int | None = None) -> LocalCluster:
    """A control and `nodes` nodes on loopback, gone when this process exits."""
    env = _child_env()
    workers = workers or _default_workers(nodes)
    keys = ephemeral_keys()
    secure = ["--keys", str(keys.path)]
    try:
        control = spawn_daemon(["control", "--bind", "tcp://127.0.0.1:*", *secure], env)
    except BaseException:
        shutil.rmtree(keys.path, ignore_errors=True)
        raise
    cluster = LocalCluster(None, [], [control], keys=keys)
    try:
        wait_ready([control])
        cluster.control = control.endpoint
        node_daemons = [
            spawn_daemon(
                [
                    "node",
                    "--control",
                    control.endpoint,
                    "--bind",
                    "tcp://127.0.0.1:*",
                    "--workers",
                    str(workers),
                    *secure,
                ],
                env,
            )
            for _ in range(nodes)
        ]
        cluster.daemons.extend(node_daemons)
        wait_ready(node_daemons)
    except BaseException:
        cluster.stop()
        raise
    cluster.nodes = [d.endpoint for d in node_daemons]
    return cluster


def start_private_node(workers: int | None = None) -> LocalCluster:
    """A node of this process's own, in no cluster: where `_local` jobs run."""
    env = _child_env()
    workers = workers or (os.cpu_count() or 2)
    keys = ephemeral_keys()
    try:
        node = spawn_daemon(
            [
                "node",
                "--standalone",
                "--bind",
                "tcp://127.0.0.1:*",
                "--workers",
                str(workers),
                "--keys",
                str(keys.path),
            ],
            env,
        )
    except BaseException:
        shutil.rmtree(keys.path, ignore_errors=True)
        raise
    cluster = LocalCluster(None, [], [node], keys=keys)
    try:
        wait_ready([node])
    except BaseException:
        cluster.stop()
        raise
    cluster.nodes = [node.endpoint]
    return cluster
