"""Which way imports go inside the ZeroMQ engine (issue 14): the node never
imports the client, the wire imports neither, and the scheduler's policy
imports nothing that does I/O. Read from the source (every import, also
those inside functions), so a violation fails here, not at a distance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"


def _type_only(tree: ast.AST) -> set[ast.AST]:
    """The nodes under `if TYPE_CHECKING:` (never imported at run time)."""
    out: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                out.update(ast.walk(stmt))
    return out


def _imports(path: Path, run_time_only: bool = False) -> set[str]:
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_only(tree) if run_time_only else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((RUNTIME / folder).rglob("*.py"))


@pytest.mark.parametrize(
    ("folder", "banned"),
    [
        ("cluster/node", "lucidity.cluster.client"),
        ("cluster/wire", "lucidity.cluster.client"),
        ("cluster/wire", "lucidity.cluster.node"),
        ("cluster/client", "lucidity.cluster.node"),
    ],
)
def test_a_side_never_imports_the_other(folder: str, banned: str) -> None:
    modules = _modules(folder)
    assert modules, f"no modules under runtime/{folder}"
    bad = {
        f"{m.relative_to(RUNTIME)}: {name}"
        for m in modules
        for name in _imports(m)
        if name == banned or name.startswith(banned + ".")
    }
    assert not bad, f"runtime/{folder} imports {banned}: {sorted(bad)}"


def test_the_scheduler_policy_does_no_io() -> None:
    names = _imports(RUNTIME / "cluster/node/scheduler.py", run_time_only=True)
    io = (
        "socket",
        "subprocess",
        "os",
        "signal",
        "selectors",
        "zmq",
        "lucidity.cluster",
    )
    bad = {n for n in names if any(n == m or n.startswith(m + ".") for m in io)}
    assert not bad, f"the scheduler imports {sorted(bad)}"


# Written against `lucidity.engine` only: they never import an engine's modules.
ENGINE_NEUTRAL = ("_stubs", "engine", "fanout", "chunks", "executor", "joblib")


@pytest.mark.parametrize("module", ENGINE_NEUTRAL)
def test_engine_neutral_modules_never_import_an_engine(module: str) -> None:
    names = _imports(RUNTIME / f"{module}.py")
    engines = ("lucidity.cluster", "lucidity.ray", "ray")
    bad = sorted(n for n in names if n.split(".")[0] == "ray" or n.startswith(engines))
    assert not bad, f"runtime/{module}.py imports {bad}"
