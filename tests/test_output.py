"""What jobs print: it never blocks a worker or a node, and it reaches the
caller (prefixed with the job and where it ran) while the job runs; long
fanouts show a progress bar on a terminal; `lucidity status --watch`.

Real daemons: an embedded cluster started by a fresh interpreter (its
stdout and stderr read by the test), and CLI-started clusters through
conftest's `make_daemons`. The jobs are a tiny app written here
(`outapp`), called by reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

APP = "outapp"
RUN_S = 120.0  # a fresh interpreter, an embedded cluster, thousands of jobs

APP_SOURCE = '''
"""Jobs that print."""
import logging
import os
import sys
import time

from lucidity import _stubs

TALK = _stubs.JobRef("outapp.jobs:talk")


def chatty(i, size):
    print(f"chatty {i} " + "x" * size)
    return i


def talk(tag, pause):
    print(f"out {tag} one")
    print(f"err {tag} one", file=sys.stderr)
    time.sleep(pause)
    print(f"out {tag} two")
    os.write(1, f"fd1 {tag}\\n".encode())
    os.write(2, f"fd2 {tag}\\n".encode())
    logging.getLogger("outapp").warning("log %s", tag)
    return tag


def parent(tag):
    print(f"parent {tag} before")
    _stubs.run_remote(TALK, (f"child-{tag}", 0.0))
    print(f"parent {tag} after")
    return tag


def flood(i, lines, size):
    out = sys.stdout
    for n in range(lines):
        out.write(f"flood {i} {n} " + "y" * size + "\\n")
    return i


def same(i):
    print("the same line from every job")
    return i


def slow(i, seconds):
    time.sleep(seconds)
    return i
'''


def _clean_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in (
        "LUCIDITY_CONTROL",
        "LUCIDITY_NODE",
        "LUCIDITY_NODE_ID",
        "LUCIDITY_FORWARD_OUTPUT",
        "LUCIDITY_PROGRESS",
        "PYTHONPATH",
    ):
        env.pop(name, None)
    env["LUCIDITY_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def app_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("outapp")
    pkg = root / APP
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""The output tests\' app."""\n')
    (pkg / "jobs.py").write_text(APP_SOURCE)
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name == APP or name.startswith(APP + "."):
                del sys.modules[name]


def run_script(
    root: Path, body: str, timeout: float = RUN_S, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh interpreter (an embedded cluster of its own);
    its stdout and stderr, bounded by `timeout` (a hang fails the test, and
    the interpreter and its daemons are ended with it)."""
    script = "from lucidity import _stubs\n" + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=root,
        env=_clean_env(PYTHONPATH=str(root), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Its daemons watch its end of their stdin pipes: they go with it.
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(
            f"the script hung (killed after {timeout:.0f} s); stdout tail:\n"
            f"{out[-2000:]}\nstderr tail:\n{err[-2000:]}"
        )
    assert proc.returncode == 0, f"exit {proc.returncode}; stderr:\n{err[-4000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---- never block (issue 11, item 1) ------------------------------------------


@pytest.mark.parametrize("forward", ["1", "0"])
def test_printing_jobs_never_freeze_the_embedded_cluster(
    app_root: Path, forward: str
) -> None:
    # ~3,000 jobs of ~120 bytes each: several times the 64 KiB a pipe holds,
    # per node. Before the fix the workers inherited their node's stdout, a
    # pipe the embedded cluster reads only for the READY line, and hung.
    res = run_script(
        app_root,
        """
        CHATTY = _stubs.JobRef("outapp.jobs:chatty")
        for i in range(3000):
            assert _stubs.run_remote(CHATTY, (i, 100)) == i
        print("ALL DONE", flush=True)
        """,
        LUCIDITY_FORWARD_OUTPUT=forward,
    )
    assert "ALL DONE" in res.stdout
    shown = res.stdout if forward == "1" else res.stderr
    seen = sum(1 for line in shown.splitlines() if " chatty " in line)
    assert seen == 3000, f"{seen} of 3000 lines seen"
