"""`python -m lucidity.codegen`: the same as the `lucidity-gen` command."""

from __future__ import annotations

from lucidity.codegen.cli import main

raise SystemExit(main())
