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
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import waits

APP_NAME = "lucidity_rtapp"
APPS = Path(__file__).parent / "apps"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
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


# ---- processes, seen through /proc ------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first),
    or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of `pid`, or None if there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[1]))


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot): tells a pid from its reuse."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def cpu_ticks(pid: int) -> int | None:
    """CPU time `pid` has used (user + system, clock ticks)."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped yet counts as gone)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pid and st[0] != "Z":
                out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait (bounded) until none of `pids` runs; return those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Procs:
    """The /proc helpers, for test modules (they cannot import conftest)."""

    alive = staticmethod(alive)
    children = staticmethod(children)
    descendants = staticmethod(descendants)
    wait_gone = staticmethod(wait_gone)
    kill_pids = staticmethod(kill_pids)
    stat = staticmethod(_stat)
    cpu_ticks = staticmethod(cpu_ticks)


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


# ---- daemons ------------------------------------------------------------------


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


def _daemon_env(app_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("LUCIDITY_CONTROL", "LUCIDITY_NODE", "LUCIDITY_NODE_ID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(app_dir), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


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
        yield App(root, _daemon_env(root))
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
