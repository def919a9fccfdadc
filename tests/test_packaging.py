"""The wheel ships every package of the source tree.

`[tool.setuptools] packages` is an explicit list (the folders map onto
`lucidity` by `package-dir`), so a new subpackage that is not listed is left
out of the wheel: only the env that imports it (tox's `ray`, once) would
notice. This checks the list against the folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    tomllib = None

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "runtime": "lucidity",
    "codegen": "lucidity.codegen",
    "templates": "lucidity.templates",
}


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    return found


@pytest.mark.skipif(tomllib is None, reason="tomllib is new in Python 3.11")
def test_every_package_folder_is_in_the_wheel_list() -> None:
    assert tomllib is not None
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert (
        _packages_on_disk() - listed == set()
    ), "add these to [tool.setuptools] packages"
    assert listed - _packages_on_disk() == set(), "listed but not on disk"
