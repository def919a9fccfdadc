"""The stamp of generated modules: up-to-date files are known without a parse,
a change of the output rules or a hand edit makes them stale, a worker pool
writes the same bytes, and an incompatible stub interface fails at import."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import libcst
import pytest

from lucidity.codegen import rules
from lucidity.codegen.cli import main as lucidity_gen
from lucidity.codegen.write import Action, apply, plan

SQUARE = """\
from lucidity import job


@job
def square(a: int) -> int:
    return a * a
"""

HALF = """\
from lucidity import job


@job(memory=64 * 1024 * 1024)
def half(x: float) -> float:
    return x / 2
"""


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The no-jobs cache of in-process CLI runs, kept out of ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LUCIDITY_GEN_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "geometry.py").write_text(SQUARE)
    (app / "halves.py").write_text(HALF)
    (app / "plain.py").write_text("def f() -> None:\n    pass\n")
    apply(plan([str(tmp_path)]))
    return tmp_path


def _lines(source: str | bytes) -> int:
    return source.count("\n") if isinstance(source, str) else source.count(b"\n")


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The line counts of the sources libcst parses from now on (the
    collector's `skim` blanks bodies but keeps every line)."""
    seen: list[int] = []
    real: Callable[..., libcst.Module] = libcst.parse_module

    def counting(source: str | bytes, *args: object, **kwargs: object) -> libcst.Module:
        seen.append(_lines(source))
        return real(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(libcst, "parse_module", counting)
    yield seen


@pytest.fixture
def fresh_fingerprint() -> Iterator[None]:
    cached = rules.fingerprint  # a test may patch it over
    cached.cache_clear()
    yield
    cached.cache_clear()


def test_up_to_date_files_are_not_parsed_again(
    project: Path, parses: list[int]
) -> None:
    again = plan([str(project)], workers=1)
    assert again.errors == ()
    assert not again.stale
    assert again.count(Action.UNCHANGED) == 2
    assert parses == []  # both known current from their stamps alone

    geometry = project / "app" / "geometry.py"
    geometry.write_text(SQUARE.replace("a * a", "a**2"))
    changed = plan([str(project)], workers=1)
    assert parses == [_lines(geometry.read_bytes())]  # only the changed source
    # Its stubs do not change (same signature): only the source hash does.
    assert [c.action for c in changed.changes] == [Action.WRITE, Action.UNCHANGED]
    assert changed.changes[0].path.endswith("geometry_jobs.py")


def test_a_change_of_the_output_rules_makes_check_fail(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_fingerprint: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert lucidity_gen(["--check", str(project)]) == 0
    real = rules.fingerprint()
    # Another generator (other templates, codegen source, black year or mode).
    monkeypatch.setattr(rules, "fingerprint", lambda: "0123456789abcdef")
    capsys.readouterr()
    assert lucidity_gen(["--check", str(project)]) == 1
    out = capsys.readouterr().out
    assert f"-# output-rules: {real};" in out
    assert "+# output-rules: 0123456789abcdef;" in out
    assert lucidity_gen([str(project)]) == 0  # regenerating makes it current
    assert lucidity_gen(["--check", str(project)]) == 0


def test_the_fingerprint_follows_blacks_major_version_not_its_release(
    monkeypatch: pytest.MonkeyPatch, fresh_fingerprint: None
) -> None:
    real = importlib.metadata.version
    major = int(real("black").split(".")[0])

    def black_is(release: str) -> None:
        rules.fingerprint.cache_clear()
        monkeypatch.setattr(
            importlib.metadata,
            "version",
            lambda name: release if name == "black" else real(name),
        )

    black_is(f"{major}.1.0")
    base = rules.fingerprint()
    black_is(f"{major}.99.3")
    assert rules.fingerprint() == base
    black_is(f"{major + 1}.1.0")
    assert rules.fingerprint() != base


def test_the_fingerprint_follows_the_templates(
    monkeypatch: pytest.MonkeyPatch, fresh_fingerprint: None
) -> None:
    base = rules.fingerprint()
    rules.fingerprint.cache_clear()
    real_read = Path.read_bytes

    def edited(self: Path) -> bytes:
        data = real_read(self)
        return data + b"\n" if self.name == "stubs.py.j2" else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert rules.fingerprint() != base


def test_a_hand_edit_of_generated_code_makes_check_fail(
    project: Path, parses: list[int]
) -> None:
    stubs = project / "app" / "geometry_jobs.py"
    stubs.write_text(stubs.read_text().replace("run_remote(", "run_local("))
    result = plan([str(project)], workers=1)
    assert result.stale
    assert [c.action for c in result.changes] == [Action.WRITE, Action.UNCHANGED]
    assert len(parses) == 1


def test_a_pool_writes_what_one_process_writes(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    for i in range(4):
        (app / f"m{i}.py").write_text(SQUARE.replace("square", f"square{i}"))
    (app / "bad.py").write_text(
        "from lucidity import job\n\n\n@job\ndef f(:\n    pass\n"
    )
    serial = plan([str(tmp_path)], workers=1)
    pooled = plan([str(tmp_path)], workers=2)
    assert pooled == serial
    assert len(serial.errors) == 1 and "bad.py:5:" in str(serial.errors[0])
    assert serial.count(Action.WRITE) == 4


def test_a_source_without_jobs_is_parsed_once(
    project: Path, parses: list[int], cache_dir: Path
) -> None:
    main = project / "app" / "main.py"
    main.write_text("from app.geometry_jobs import square_remote\n\nimport lucidity\n")
    assert lucidity_gen(["-q", str(project)]) == 0
    assert parses == [_lines(main.read_bytes())]
    assert len(list(cache_dir.iterdir())) == 1
    assert lucidity_gen(["-q", "--check", str(project)]) == 0
    assert lucidity_gen(["-q", str(project)]) == 0
    assert len(parses) == 1  # known from the cache since
    main.write_text(main.read_text() + "\n# edited\n")
    assert lucidity_gen(["-q", "--check", str(project)]) == 0
    assert len(parses) == 2


def test_exit_non_zero_on_write_fails_once_then_passes(project: Path) -> None:
    (project / "app" / "geometry.py").write_text(SQUARE + "\n# edited\n")
    assert lucidity_gen(["-q", "--exit-non-zero-on-write", str(project)]) == 1
    assert lucidity_gen(["-q", "--exit-non-zero-on-write", str(project)]) == 0
    assert lucidity_gen(["-q", "--workers", "0", str(project)]) == 2


def _import(root: Path, module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("stamp", "advice"),
    [
        (0, "run lucidity-gen again to regenerate it"),
        (rules.INTERFACE + 1, "upgrade lucidity, or run lucidity-gen again"),
    ],
)
def test_an_incompatible_stub_module_fails_at_import_saying_what_to_do(
    project: Path, stamp: int, advice: str
) -> None:
    assert _import(project, "app.geometry_jobs").returncode == 0
    stubs = project / "app" / "geometry_jobs.py"
    line = f"_lucidity.require_interface(__name__, {rules.INTERFACE})"
    text = stubs.read_text()
    assert line in text
    stubs.write_text(
        text.replace(line, f"_lucidity.require_interface(__name__, {stamp})")
    )
    proc = _import(project, "app.geometry_jobs")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lucidity._stubs.IncompatibleStubsError: app.geometry_jobs ")
    assert f"stub interface {stamp};" in last
    assert advice in last
    assert "AttributeError" not in proc.stderr
