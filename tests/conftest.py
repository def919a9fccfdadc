"""Fixtures of the runtime's integration tests: real daemons, nothing leaked.

* `rt_app`: the test app (`tests/apps/lucidity_rtapp`) copied to a tmp dir,
  with its `work_jobs.py` written by `lucidity-gen`, importable from this
  process (undone at the end of the session).
* `rt_cluster`: a real control and two real nodes (`--workers 1`) on
  `tcp://127.0.0.1:*` (the OS picks free ports), run from the app's folder.
* `rt_client`: this process's client connected to `rt_cluster` for one test,
  shut down after it.
* `rt_daemons`: a factory of extra daemons for one test, all stopped after it.
* `make_daemons`: the same factory for another app's folder and environment
  (`make_daemons(cwd, env)`), for test modules that bring their own app.

Daemons started without `--keys` use this user's keys folder under
`$XDG_CONFIG_HOME`: for the whole session it is a temporary folder (set before
any test or daemon starts, removed at the end), never the real ~/.config.

This is the one way tests start daemons (and helper processes that print the
same `LUCIDITY-READY` line). Every process is owned here and ended by pid in a
finalizer: SIGCONT (a SIGSTOPped process must see what follows), SIGTERM, a
bounded wait, then SIGKILL; its workers are collected from `/proc` first, and
every pid ever seen under one of our processes (workers of a SIGKILLed node
are no longer our descendants) must be gone too. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import waits
from daemons import READY_TIMEOUT_S, Daemons, daemon_env
from procs import (
    Procs,
    descendants,
    kill_pids,
    wait_gone,
)

APP_NAME = "lucidity_rtapp"
APPS = Path(__file__).parent / "apps"
GONE_TIMEOUT_S = 10.0


# ---- this user's keys folder, in a temporary config home ----------------------

_config_home: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _config_home
    _config_home = tempfile.mkdtemp(prefix="lucidity-test-config-")
    os.environ["XDG_CONFIG_HOME"] = _config_home


def pytest_unconfigure(config: pytest.Config) -> None:
    if _config_home is not None:
        shutil.rmtree(_config_home, ignore_errors=True)


# ---- processes, seen through /proc (procs.py) -------------------------------


@pytest.fixture(scope="session")
def procs() -> type[Procs]:
    return Procs


@pytest.fixture(scope="session")
def bounded() -> Callable[[Callable[[], Any], float], Any]:
    return waits.bounded


@pytest.fixture
def app(rt_client: Any) -> Any:
    """The test app's generated stubs (`work_jobs`), on `rt_client`'s cluster."""
    from lucidity_rtapp import work_jobs

    return work_jobs


@pytest.fixture
def work(rt_client: Any) -> Any:
    """The test app's own module (its jobs and error types)."""
    from lucidity_rtapp import work

    return work


# ---- daemons (daemons.py) -----------------------------------------------------


# ---- the app ------------------------------------------------------------------


@dataclass
class App:
    root: Path  # the folder holding the package
    env: dict[str, str]  # an environment in which the package imports

    @property
    def package(self) -> Path:
        return self.root / APP_NAME


@pytest.fixture(scope="session")
def rt_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    root = tmp_path_factory.mktemp("rtapp")
    shutil.copytree(
        APPS / APP_NAME,
        root / APP_NAME,
        ignore=shutil.ignore_patterns("__pycache__", "*_jobs.py"),
    )
    gen = subprocess.run(
        [sys.executable, "-m", "lucidity.codegen", str(root / APP_NAME)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gen.returncode == 0, gen.stderr
    assert (root / APP_NAME / "work_jobs.py").is_file()
    sys.path.insert(0, str(root))
    try:
        yield App(root, daemon_env(root))
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name == APP_NAME or name.startswith(APP_NAME + "."):
                del sys.modules[name]


# ---- the cluster --------------------------------------------------------------


@dataclass
class Cluster:
    control: str
    control_pid: int
    nodes: list[str]  # endpoints
    node_pids: list[int]
    node_ids: dict[str, str]  # endpoint -> node id
    daemons: Daemons

    @property
    def pids(self) -> set[int]:
        return {self.control_pid, *self.node_pids}


def _forget_address() -> None:
    """Undo `lucidity.connect` so nothing of ours outlives the session."""
    import lucidity
    from lucidity.cluster.client import core as client

    lucidity.shutdown()
    client._address = None


@pytest.fixture(scope="session")
def rt_cluster(
    rt_app: App, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    import lucidity
    from lucidity.cluster.client import get_client

    daemons = Daemons(rt_app.root, rt_app.env, tmp_path_factory.mktemp("logs"))
    try:
        control = daemons.control()
        nodes = [daemons.node(control.endpoint) for _ in range(2)]
        lucidity.connect(control.endpoint)
        joined = get_client().wait_for_nodes(2, timeout=READY_TIMEOUT_S)
        lucidity.shutdown()
        ids = {n["addr"]: n["id"] for n in joined}
        assert set(ids) == {n.endpoint for n in nodes}
        yield Cluster(
            control.endpoint,
            control.pid,
            [n.endpoint for n in nodes],
            [n.pid for n in nodes],
            ids,
            daemons,
        )
    finally:
        _forget_address()
        forced = daemons.stop_all()
    assert not forced, f"daemons or workers had to be SIGKILLed: {forced}"


@pytest.fixture
def rt_client(rt_cluster: Cluster) -> Iterator[Cluster]:
    """This process's client, connected to `rt_cluster` for one test."""
    import lucidity
    from lucidity.cluster.client import get_client

    lucidity.connect(rt_cluster.control)
    try:
        get_client().wait_for_nodes(2, timeout=READY_TIMEOUT_S)
        yield rt_cluster
    finally:
        _forget_address()


def _daemon_factory(root: Path) -> Iterator[Callable[[Path, dict[str, str]], Daemons]]:
    made: list[Daemons] = []

    def make(cwd: Path, env: dict[str, str]) -> Daemons:
        logdir = root / f"logs-{len(made)}"
        logdir.mkdir()
        made.append(Daemons(cwd, env, logdir))
        return made[-1]

    try:
        yield make
    finally:
        _forget_address()
        for daemons in made:
            daemons.stop_all()


@pytest.fixture
def make_daemons(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, str]], Daemons]]:
    """`make_daemons(cwd, env)`: daemons run from `cwd` with `env` for one
    test (logs under its tmp dir), all stopped after it."""
    yield from _daemon_factory(tmp_path)


@pytest.fixture(scope="module")
def make_module_daemons(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[Path, dict[str, str]], Daemons]]:
    """`make_daemons` for daemons a whole test module shares."""
    yield from _daemon_factory(tmp_path_factory.mktemp("daemons"))


@pytest.fixture
def rt_daemons(rt_app: App, tmp_path: Path) -> Iterator[Daemons]:
    """Extra daemons for one test (from the app's folder), stopped after it."""
    daemons = Daemons(rt_app.root, rt_app.env, tmp_path)
    try:
        yield daemons
    finally:
        _forget_address()
        daemons.stop_all()


@pytest.fixture(scope="session", autouse=True)
def _no_process_left() -> Iterator[None]:
    """At the end of the session, no process started by the tests runs."""
    yield
    left = wait_gone(descendants(os.getpid()), GONE_TIMEOUT_S)
    kill_pids(left)
    assert not left, f"processes left behind by the tests: {left}"


@pytest.fixture(scope="session", autouse=True)
def _lucidity_gen_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """lucidity-gen's no-jobs cache in the session's temporary folder, not the
    user's ~/.cache: inherited by every lucidity-gen the tests run."""
    old = os.environ.get("LUCIDITY_GEN_CACHE_DIR")
    os.environ["LUCIDITY_GEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("gen-cache"))
    yield
    if old is None:
        os.environ.pop("LUCIDITY_GEN_CACHE_DIR", None)
    else:
        os.environ["LUCIDITY_GEN_CACHE_DIR"] = old
