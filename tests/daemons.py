"""The daemon harness: real `lucidity control` / `lucidity node` processes
(and helpers that print the same `LUCIDITY-READY` line), started from an
app's folder, each owned and ended by pid (see conftest's docstring for the
order: SIGCONT, SIGTERM, a bounded wait, SIGKILL, then every pid ever seen
under ours). A helper module: conftest's fixtures build on it."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import children, descendants, kill_pids, start_time, wait_gone

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


@dataclass
class Daemon:
    kind: str
    proc: subprocess.Popen[bytes]
    log: Path
    endpoint: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def workers(self) -> list[int]:
        """The live child processes (a node's workers)."""
        return children(self.pid)


def _read_ready(d: Daemon, timeout: float) -> str:
    """The endpoint from the daemon's `LUCIDITY-READY <endpoint>` line."""
    assert d.proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(d.proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{d.kind} daemon (pid {d.pid}) not ready within {timeout} s; "
                    f"log:\n{d.log_text()}"
                )
            if not sel.select(left):
                continue
            chunk = os.read(d.proc.stdout.fileno(), 4096)
            if not chunk:
                d.proc.wait(STOP_TIMEOUT_S)
                raise RuntimeError(
                    f"{d.kind} daemon exited with {d.proc.returncode} before it "
                    f"was ready; log:\n{d.log_text()}"
                )
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    tag, _, endpoint = line.partition(" ")
    assert tag == "LUCIDITY-READY", line
    return endpoint.strip()


@dataclass
class Daemons:
    """Processes started from the app's folder; `stop_all` ends them by pid."""

    cwd: Path
    env: dict[str, str]
    logdir: Path
    started: list[Daemon] = field(default_factory=list)
    # Every pid ever seen under one of our processes, with its start time
    # (a pid can be reused): the workers of a node that was SIGKILLed are no
    # longer our descendants, and must go too.
    seen: dict[int, int | None] = field(default_factory=dict)

    def spawn(
        self,
        kind: str,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Daemon:
        """Start `argv` (stderr to a log); with `wait`, read its READY line."""
        log = self.logdir / f"{kind}-{len(self.started)}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=self.cwd if cwd is None else cwd,
                env=self.env if env is None else env,
            )
        d = Daemon(kind, proc, log)
        self.started.append(d)
        if wait:
            d.endpoint = _read_ready(d, READY_TIMEOUT_S)
            self.snapshot()
        return d

    def start(self, kind: str, *args: str, wait: bool = True, **kw: Any) -> Daemon:
        """`lucidity KIND ARGS...`; `cwd` and `env` override the folder's."""
        argv = [sys.executable, "-m", "lucidity", "--log-level", "WARNING", kind]
        # --parent-pipe: a safety net, gone if pytest itself dies.
        return self.spawn(kind, [*argv, *args, "--parent-pipe"], wait=wait, **kw)

    def control(self, *args: str, **kw: Any) -> Daemon:
        return self.start("control", "--bind", "tcp://127.0.0.1:*", *args, **kw)

    def node(self, control: str, *args: str, workers: int = 1, **kw: Any) -> Daemon:
        return self.start(
            "node",
            "--control",
            control,
            "--bind",
            "tcp://127.0.0.1:*",
            "--workers",
            str(workers),
            *args,
            **kw,
        )

    def snapshot(self) -> None:
        """Remember every process now running under one of ours."""
        for d in self.started:
            for pid in descendants(d.pid):
                self.seen.setdefault(pid, start_time(pid))

    def signal(self, d: Daemon, sig: int) -> None:
        """Send `sig` to `d` (its workers are remembered first); after
        SIGKILL, wait (bounded) until it is gone."""
        self.snapshot()
        os.kill(d.pid, sig)
        if sig == signal.SIGKILL:
            d.proc.wait(STOP_TIMEOUT_S)

    def stop(self, d: Daemon) -> list[int]:
        """SIGCONT, SIGTERM, bounded wait, SIGKILL; then its workers must be
        gone too. Returns the pids (daemon or workers) that had to be SIGKILLed.
        """
        forced = []
        self.snapshot()
        tree = descendants(d.pid)
        if d.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    d.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            try:
                d.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait(STOP_TIMEOUT_S)
                forced.append(d.pid)
        left = wait_gone(tree, STOP_TIMEOUT_S)
        kill_pids(left)
        forced.extend(left)
        for f in (d.proc.stdin, d.proc.stdout):
            if f is not None and not f.closed:
                f.close()
        return forced

    def stop_all(self) -> list[int]:
        self.snapshot()
        forced = []
        for d in reversed(self.started):
            forced.extend(self.stop(d))
        self.started.clear()
        ours = [pid for pid, t in self.seen.items() if start_time(pid) == t]
        orphans = [
            pid
            for pid in wait_gone(ours, STOP_TIMEOUT_S)
            if start_time(pid) == self.seen[pid]
        ]
        kill_pids(orphans)
        forced.extend(pid for pid in orphans if pid not in forced)
        self.seen.clear()
        return forced


def daemon_env(app_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("LUCIDITY_CONTROL", "LUCIDITY_NODE", "LUCIDITY_NODE_ID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(app_dir), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env
