"""`skim`: libcst sees only the bodies that can hold a job, with every line
and column where it is in the file, and the collector's answer is the same
as over the whole source."""

from __future__ import annotations

import sysconfig
import textwrap
from pathlib import Path

import pytest

import lucidity.codegen.collect as collect_module
from lucidity.codegen.collect import collect
from lucidity.codegen.skim import skim

SOURCE = textwrap.dedent('''\
    """A module."""
    from lucidity import job as task

    def plain(x):
        y = x + 1
        return y

    class Shapes:
        def area(self):
            return 1

        @task
        def marked(self):
            return 2

    @task
    def square(a: int) -> int:
        return a * a
    ''').encode()


def test_bodies_without_a_marker_are_blanked_keeping_lines() -> None:
    skimmed = skim(SOURCE)
    assert skimmed is not None
    lines = skimmed.source.decode().split("\n")
    assert len(lines) == len(SOURCE.decode().split("\n"))
    assert lines[4:6] == ["    pass", ""]  # plain's body
    assert lines[11:13] == ["    @task", "    def marked(self):"]  # Shapes' kept
    assert lines[9] == lines[13] == "        pass"  # but not its methods' bodies
    assert lines[17] == "    pass"  # square's own body names no marker
    errors = [str(e) for e in collect(SOURCE, "m.py", "m", "m.py", "c").errors]
    assert errors == [
        "m.py:13:5: @job function 'marked' is a method; only module-level "
        "functions can be jobs (they are run by reference): move it out of the class"
    ]


def test_unparseable_or_not_utf8_is_left_whole() -> None:
    assert skim(b"def f(:\n    pass\n") is None
    assert skim("# coding: latin-1\nx = '\xe9'\n".encode("latin-1")) is None


_STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.mark.parametrize("name", ["argparse.py", "dataclasses.py", "typing.py"])
def test_collect_answers_as_over_the_whole_source(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Marked wholesale, as the benchmark does: every module-level def a job.
    text = (_STDLIB / name).read_text(encoding="utf-8")
    marked = "from lucidity import job\n" + text.replace("\ndef ", "\n@job\ndef ")
    source = marked.encode()
    skimmed = skim(source)
    assert skimmed is not None and skimmed.elided
    fast = collect(source, name, "m", "m.py", "c")
    monkeypatch.setattr(collect_module, "skim", lambda source: None)
    whole = collect(source, name, "m", "m.py", "c")
    assert fast == whole
    assert fast.module is not None or fast.errors


def test_a_body_searched_in_libcst_tree_is_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Should the yields found by CPython's parser not match the walk, the
    # generator's body is searched in libcst's tree: not the blanked one.
    source = (
        b"from lucidity import job\n\n\n@job\ndef gen(n: int) -> int:\n    yield n\n"
    )
    monkeypatch.setattr(collect_module.Yields, "knows", lambda self, i, name: False)
    errors = [str(e) for e in collect(source, "m.py", "m", "m.py", "c").errors]
    assert errors == [
        "m.py:6:5: @job function 'gen' is a generator; jobs must return their "
        "result: return a list instead of yielding"
    ]
