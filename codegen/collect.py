"""Model the `@job` functions of one source file as IR (`collect`).

It parses the file (skimmed first: `lucidity.codegen.skim`), has
`lucidity.codegen.finder.JobFinder` walk it, places the errors found, and
builds the stub module's `GeneratedModule` from the jobs. Every module-level `def` and `async def` can be a job, with any parameters
and defaults (a default that is not a literal becomes a sentinel in the
stubs). What cannot be is refused here, as a `SourceError` pointing at the
offending token: generators, methods, nested functions, lambdas, functions a
later statement of the module replaces, and options that are not literals or
that `lucidity._options.validate_options` rejects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import libcst as cst

from lucidity.codegen import imports
from lucidity.codegen.errors import Positions, SourceError, syntax_error
from lucidity.codegen.finder import JobFinder
from lucidity.codegen.marks import (
    Marks,
    direct_call_pattern,
)
from lucidity.codegen.model import GeneratedModule, JobSpec
from lucidity.codegen.skim import skim
from lucidity.codegen.yields import Yields

__all__ = ["JOB_QUALIFIED_NAME", "Collected", "collect"]

JOB_QUALIFIED_NAME = "lucidity.job"


@dataclass(frozen=True)
class Collected:
    """What one source file yields: its stub module's IR (None: no jobs) or errors."""

    module: GeneratedModule | None
    errors: tuple[SourceError, ...] = ()


def collect(
    source: bytes,
    path: str,
    module: str,
    source_path: str,
    regenerate_command: str,
) -> Collected:
    """Parse `source` (the bytes of `path`, importable as `module`) and model its jobs.

    `source_path` is the file relative to its package root (for the header);
    `regenerate_command` is the command line the header tells readers to run.
    """
    return _collect(source, path, module, source_path, regenerate_command, True)


def _collect(
    source: bytes,
    path: str,
    module: str,
    source_path: str,
    regenerate_command: str,
    skimming: bool,
) -> Collected:
    skimmed = skim(source) if skimming else None
    try:
        tree = cst.parse_module(source if skimmed is None else skimmed.source)
    except cst.ParserSyntaxError as exc:
        return Collected(None, (syntax_error(source, path, exc),))
    except (UnicodeDecodeError, SyntaxError) as exc:  # bad bytes or coding cookie
        message = f"cannot decode: {exc}; save the file as UTF-8 (or fix its coding)"
        return Collected(None, (SourceError(path, 1, 1, message),))
    text = source.decode(tree.encoding, errors="replace")
    if skimmed is None:
        yields = Yields(source, text)
    else:
        yields = Yields(source, text, skimmed.tree, skimmed.elided)
    finder = JobFinder(path, direct_call_pattern(text), yields)
    finder.walk(tree.body, Marks(set(), set()), None)
    if skimmed is not None and finder.searched_bodies:
        # A job's body was searched for `yield` in libcst's tree, where it
        # may be blanked: only the whole source can answer.
        return _collect(source, path, module, source_path, regenerate_command, False)
    positions = Positions(tree)
    errors = [positions.error(path, node, message) for node, message in finder.errors]
    if not finder.jobs:
        return Collected(None, tuple(errors))
    type_imports, uses_any, import_errors = imports.type_imports(
        [imports.Annotated(job.name, tuple(job.annotations)) for job in finder.jobs],
        imports.ImportTable.of(tree),
        module,
        path,
        positions,
    )
    errors.extend(import_errors)
    if errors:
        return Collected(None, tuple(errors))
    alias, refs = imports.module_names(finder.jobs)
    generated = GeneratedModule(
        module=module,
        source_path=source_path,
        source_hash=hashlib.sha256(source).hexdigest(),
        regenerate_command=regenerate_command,
        runtime_alias=alias,
        jobs=tuple(
            JobSpec(
                name=job.name,
                module=module,
                params=job.params,
                returns_annotation=job.returns,
                options=job.options,
                ref_name=refs[job.name],
                runtime_alias=alias,
                is_async=job.is_async,
            )
            for job in finder.jobs
        ),
        type_imports=type_imports,
        annotations_use_any=uses_any,
    )
    return Collected(generated, ())
