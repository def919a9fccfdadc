"""The pytest plugin (`lucidity.pytest_plugin`, entry point pytest11).

A user's own test file, using only the plugin's fixtures, runs under pytest
in a subprocess with a clean environment (the installed lucidity, no
PYTHONPATH, no project conftest): it passes, its daemons run jobs, the
connection of before comes back after `lucidity_nodes`, and every daemon it
started is gone when that pytest exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import wait_gone

USER_TESTS = """
import os
from pathlib import Path

from lucidity import Executor
from lucidity.engine import get_engine

PIDS = Path(os.environ["PIDS_FILE"])


def test_jobs_run_on_the_cluster(lucidity_cluster):
    assert len(lucidity_cluster.nodes) == 2
    PIDS.write_text(" ".join(map(str, lucidity_cluster.pids)))
    with Executor() as ex:
        assert ex.submit(pow, 2, 5).result(30) == 32
        assert ex.submit(os.getpid).result(30) != os.getpid()
        assert list(ex.map(abs, [-1, -2, 3])) == [1, 2, 3]


def test_lucidity_nodes_gives_a_cluster_of_n(lucidity_cluster, lucidity_nodes):
    three = lucidity_nodes(3)
    assert three.address != lucidity_cluster.address
    assert len(get_engine().nodes(timeout=10)) == 3
    with Executor() as ex:
        assert ex.submit(divmod, 7, 2).result(30) == (3, 1)
    with PIDS.open("a") as f:
        f.write(" " + " ".join(map(str, three.pids)))


def test_the_session_cluster_is_back(lucidity_cluster):
    nodes = get_engine().nodes(timeout=10)
    assert {n.address for n in nodes} == {n.address for n in lucidity_cluster.nodes}
"""


def test_a_users_suite_passes_with_lucidity_cluster(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    pids_file = tmp_path / "pids"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LUCIDITY_", "PYTEST_", "PYTHONPATH"))
    }
    env["PIDS_FILE"] = str(pids_file)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_user.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout, run.stdout
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 3 + 4  # a control and 2 nodes, then a control and 3
    assert not wait_gone(pids, 10), f"daemons outlived the user's pytest: {pids}"


def test_the_plugin_loads_without_lucidity_runtime() -> None:
    # Loaded into every pytest run: it must not import the runtime itself.
    code = (
        "import sys, lucidity.pytest_plugin;"
        "print(sorted(m for m in sys.modules if m.startswith('lucidity')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "lucidity.cluster" not in out.stdout and "zmq" not in out.stdout
