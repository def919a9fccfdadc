"""The embedded cluster: with no cluster configured, a fresh interpreter starts
real daemons on first use, and they (and their workers) end with it, however
it ends."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

START_S = 30.0  # a fresh interpreter, a control, two nodes and their workers
GONE_S = 5.0  # "within a few seconds"

SCRIPT = r"""
import os
import sys
import time

import lucidity.cluster.client.core
from lucidity_rtapp.work_jobs import square_local, square_remote, square_remote_fanout


def descendants(pid):
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            state, ppid = text[text.rindex(")") + 2 :].split()[:2]
            if state != "Z":
                kids.setdefault(int(ppid), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for kid in kids.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def say(*words):
    print(*words, flush=True)


assert "LUCIDITY_CONTROL" not in os.environ
say("PID", os.getpid())
say("RESULT", square_remote(7))
cluster = lucidity.cluster.client.core._cluster
say("DAEMONS", *(d.proc.pid for d in cluster.daemons))
say("TREE", *descendants(os.getpid()))
if sys.argv[1] == "hang":
    time.sleep(60)  # killed by the test long before
say("FANOUT", *square_remote_fanout(range(10)))
say("LOCAL", square_local(5))
say("TREE", *descendants(os.getpid()))
"""


def _env(app: Any) -> dict[str, str]:
    env = dict(app.env)
    for name in ("LUCIDITY_CONTROL", "LUCIDITY_NODE", "LUCIDITY_NODE_ID"):
        env.pop(name, None)
    env["LUCIDITY_LOG_LEVEL"] = "WARNING"
    return env


class Lines:
    """The script's stdout, read line by line with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.buf = b""
        self.seen: list[str] = []

    def until(self, tag: str, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    words = line.decode().split()
                    self.seen.append(line.decode())
                    if words and words[0] == tag:
                        return words[1:]
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {tag} line within {timeout} s; saw {self.seen}")
                if sel.select(left):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        self.proc.wait(GONE_S)
                        err = self.proc.stderr.read().decode()  # type: ignore[union-attr]
                        pytest.fail(
                            f"script ended before {tag}; saw {self.seen}\n{err}"
                        )
                    self.buf += chunk


@pytest.fixture
def script(rt_app: Any, tmp_path: Path, procs: Any) -> Any:
    """Start the script; whatever happens, it and its tree end by pid."""
    path = tmp_path / "embedded_app.py"
    path.write_text(SCRIPT)
    started: list[tuple[subprocess.Popen[bytes], list[int]]] = []

    def start(mode: str) -> tuple[subprocess.Popen[bytes], Lines, list[int]]:
        proc = subprocess.Popen(
            [sys.executable, str(path), mode],
            cwd=rt_app.root,
            env=_env(rt_app),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        tree: list[int] = []
        started.append((proc, tree))
        return proc, Lines(proc), tree

    yield start
    for proc, tree in started:
        tree.extend(procs.descendants(proc.pid) if proc.poll() is None else [])
        if proc.poll() is None:
            proc.kill()
        proc.wait(GONE_S)
        procs.kill_pids(procs.wait_gone(tree, GONE_S))
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def test_embedded_cluster_runs_jobs_and_ends_with_the_process(
    script: Any, procs: Any
) -> None:
    proc, lines, tree = script("run")
    assert lines.until("RESULT", START_S) == ["49"]
    daemons = [int(x) for x in lines.until("DAEMONS", START_S)]
    tree.extend(int(x) for x in lines.until("TREE", START_S))
    assert len(daemons) == 3  # a control and two nodes
    assert set(daemons) <= set(tree)
    assert len(tree) > len(daemons)  # the nodes' workers
    assert lines.until("FANOUT", START_S) == [str(i * i) for i in range(10)]
    assert lines.until("LOCAL", START_S) == ["25"]
    tree.extend(int(x) for x in lines.until("TREE", START_S))
    assert proc.wait(START_S) == 0, proc.stderr.read().decode()  # type: ignore[union-attr]
    assert procs.wait_gone(tree, GONE_S) == []


def test_embedded_cluster_ends_when_its_process_is_killed(
    script: Any, procs: Any
) -> None:
    proc, lines, tree = script("hang")
    assert lines.until("RESULT", START_S) == ["49"]
    daemons = [int(x) for x in lines.until("DAEMONS", START_S)]
    tree.extend(int(x) for x in lines.until("TREE", START_S))
    assert set(daemons) <= set(tree)
    proc.send_signal(signal.SIGKILL)
    proc.wait(GONE_S)
    start = time.monotonic()
    assert procs.wait_gone(tree, GONE_S) == []
    assert time.monotonic() - start < GONE_S
