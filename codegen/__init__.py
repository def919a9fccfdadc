"""`lucidity-gen`: find `@job` functions and write their stub modules.

Build-time only: this package (and libcst, jinja2, black, which it uses) is
never imported by the runtime. The pipeline, one concern a module:

- `discover`: walk the given paths, pick the files worth reading;
- `skim`: blank the bodies that cannot hold a job (found by CPython's parser);
- `collect`: parse a file with libcst, find its jobs, refuse what cannot be one;
- `model`: the IR, frozen dataclasses, the templates' only input;
- `render`: jinja2 templates to text in black's style (pinned mode);
- `layout`: split long statements as black does; black only for the rest;
- `rules`: the header's stamp: source hash, output-rules fingerprint, output hash;
- `cache`: which sources are known to hold no job (the one thing a stamp cannot say);
- `write`: plan, diff and atomically write or remove generated modules;
- `cli`: the `lucidity-gen` command.
"""

from __future__ import annotations

from lucidity.codegen.errors import SourceError
from lucidity.codegen.write import Plan, plan

__all__ = ["Plan", "SourceError", "plan"]
