"""The `lucidity-gen` pre-commit hook, run by pre-commit itself.

This checkout (as it is now, committed into a scratch repository) is the hook
repository; a scratch project uses it from its `.pre-commit-config.yaml` as a
user would, with `repo:` a path and `rev:` a commit. pre-commit builds the
hook's environment with pip (PyPI must be reachable), once for the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOOK_FILES = ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml")
HOOK_DIRS = ("runtime", "codegen", "templates")

SQUARE = """\
from lucidity import job


@job
def square(a: int) -> int:
    return a * a
"""

CUBE = """

@job
def cube(a: int) -> int:
    return a * a * a
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _hook_repo(root: Path) -> str:
    """This checkout's package and hook files, committed; returns the commit."""
    root.mkdir()
    for name in HOOK_FILES:
        shutil.copyfile(REPO / name, root / name)
    for name in HOOK_DIRS:
        shutil.copytree(
            REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "hook")
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True
    )
    return proc.stdout.decode().strip()


def test_the_hook_regenerates_fails_once_then_passes(tmp_path: Path) -> None:
    rev = _hook_repo(tmp_path / "hook")
    project = tmp_path / "project"
    app = project / "app"
    app.mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "geometry.py").write_text(SQUARE)
    (project / ".pre-commit-config.yaml").write_text(
        "repos:\n"
        f"  - repo: {tmp_path / 'hook'}\n"
        f"    rev: {rev}\n"
        "    hooks:\n"
        "      - id: lucidity-gen\n"
    )
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    env.pop("PRE_COMMIT", None)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=project, env=env, capture_output=True, text=True, timeout=600
        )

    def pre_commit(*args: str) -> subprocess.CompletedProcess[str]:
        return run(sys.executable, "-m", "pre_commit", *args)

    assert run("git", "init", "-q").returncode == 0
    assert run("git", "add", "-A").returncode == 0
    stubs = app / "geometry_jobs.py"

    first = pre_commit("run", "--all-files")  # builds the hook's environment
    assert first.returncode == 1, first.stdout + first.stderr
    assert "lucidity-gen" in first.stdout and "Failed" in first.stdout
    assert "wrote 1 file" in first.stdout
    assert "def square_remote(a: int) -> int:" in stubs.read_text()

    second = pre_commit("run", "--all-files")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Passed" in second.stdout

    # As a git hook: a commit whose source changed fails until the
    # regenerated stubs are staged with it.
    assert pre_commit("install").returncode == 0
    assert run("git", "add", "-A").returncode == 0
    assert run("git", "commit", "-q", "-m", "square").returncode == 0
    (app / "geometry.py").write_text(SQUARE + CUBE)
    assert run("git", "add", "app/geometry.py").returncode == 0
    refused = run("git", "commit", "-q", "-m", "cube")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "def cube_remote(a: int) -> int:" in stubs.read_text()
    assert run("git", "add", "app/geometry_jobs.py").returncode == 0
    done = run("git", "commit", "-q", "-m", "cube")
    assert done.returncode == 0, done.stdout + done.stderr
    status = run("git", "status", "--porcelain")
    assert status.stdout == ""
