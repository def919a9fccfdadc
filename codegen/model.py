"""The IR between collecting jobs and rendering them: frozen dataclasses.

The templates read nothing else, and decide nothing: every choice about the
generated text (what a stub returns, how a fanout item is typed, which names
must be imported, what the module-level names are called so that no parameter
shadows them) is a property here, where it can be unit-tested.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["GeneratedModule", "JobSpec", "Param", "ParamKind", "Stub"]

# Annotation used where the source has none; the module imports it on demand.
ANY = "Any"


class ParamKind(enum.Enum):
    """The parameter kinds a job may have (others are refused by `collect`)."""

    POSITIONAL_ONLY = "positional-only"
    POSITIONAL_OR_KEYWORD = "positional-or-keyword"


@dataclass(frozen=True)
class Param:
    """One parameter of a job, as the stubs repeat it."""

    name: str
    annotation: str | None  # source text; None when the source has none
    default: str | None  # source text of a literal; None when there is none
    kind: ParamKind = ParamKind.POSITIONAL_OR_KEYWORD

    @property
    def type(self) -> str:
        return self.annotation if self.annotation is not None else ANY

    @property
    def declaration(self) -> str:
        """`a: int = 2`, as it appears in every stub's signature."""
        text = f"{self.name}: {self.type}"
        return text if self.default is None else f"{text} = {self.default}"


@dataclass(frozen=True)
class Stub:
    """One generated function: a single call into the runtime seam."""

    name: str  # e.g. "square_remote_async"
    runtime_function: str  # the `lucidity._stubs` function it calls
    returns: str  # its return annotation
    doc: str  # its one-line docstring


@dataclass(frozen=True)
class JobSpec:
    """One `@job` function and everything its five stubs need."""

    name: str
    module: str  # dotted name of the source module
    params: tuple[Param, ...]
    returns_annotation: str | None  # source text; None when the source has none
    # Non-default options in `OPTION_NAMES` order: (name, Python source text).
    options: tuple[tuple[str, str], ...]
    ref_name: str  # module-level name of its `JobRef`, e.g. "_square"
    runtime_alias: str  # the name `lucidity._stubs` is imported as

    @property
    def target(self) -> str:
        """The job by reference, `"pkg.mod:f"`: stubs never import `pkg.mod`."""
        return f"{self.module}:{self.name}"

    @property
    def returns(self) -> str:
        return self.returns_annotation if self.returns_annotation is not None else ANY

    @property
    def signature(self) -> str:
        """The job's own parameter list, `/` included where the source had it."""
        parts: list[str] = []
        for i, param in enumerate(self.params):
            parts.append(param.declaration)
            is_last_posonly = param.kind is ParamKind.POSITIONAL_ONLY and (
                i + 1 == len(self.params)
                or self.params[i + 1].kind is not ParamKind.POSITIONAL_ONLY
            )
            if is_last_posonly:
                parts.append("/")
        return ", ".join(parts)

    @property
    def args_tuple(self) -> str:
        """The positional-arguments tuple the runtime receives: `(a, b)`."""
        names = [p.name for p in self.params]
        if len(names) == 1:
            return f"({names[0]},)"
        return "(" + ", ".join(names) + ")"

    @property
    def fanout_item_type(self) -> str:
        """One fanout element: the bare value for one parameter, else a tuple."""
        if len(self.params) == 1:
            return self.params[0].type
        if not self.params:
            return "tuple[()]"
        return "tuple[" + ", ".join(p.type for p in self.params) + "]"

    @property
    def fanout_function(self) -> str:
        """The runtime's fanout for this job: a one-parameter job's elements
        are its lone argument (`fanout_each`), others' are argument tuples."""
        return "fanout_each" if len(self.params) == 1 else "fanout"

    @property
    def ref_expression(self) -> str:
        """`_lucidity.JobRef("pkg.mod:f", {"fanout": "random"})`."""
        args = [f'"{self.target}"']
        if self.options:
            entries = ", ".join(f'"{name}": {value}' for name, value in self.options)
            args.append("{" + entries + "}")
        return f"{self.runtime_alias}.JobRef({', '.join(args)})"

    @property
    def needs_any(self) -> bool:
        return self.returns_annotation is None or any(
            p.annotation is None for p in self.params
        )

    @property
    def stubs(self) -> tuple[Stub, ...]:
        """The four one-call stubs taking the job's own parameters."""
        f, t = self.name, self.returns
        return (
            Stub(
                f"{f}_local",
                "run_local",
                t,
                f"Run `{f}` on this process's own node and wait for its result.",
            ),
            Stub(
                f"{f}_remote",
                "run_remote",
                t,
                f"Run `{f}` on a cluster node chosen at random and wait for its result.",
            ),
            Stub(
                f"{f}_local_async",
                "submit_local",
                f"Job[{t}]",
                f"Start `{f}` on this process's own node; return its handle at once.",
            ),
            Stub(
                f"{f}_remote_async",
                "submit_remote",
                f"Job[{t}]",
                f"Start `{f}` on a random cluster node; return its handle at once.",
            ),
        )

    @property
    def fanout_name(self) -> str:
        return f"{self.name}_remote_fanout"

    @property
    def exported_names(self) -> tuple[str, ...]:
        return (*(s.name for s in self.stubs), self.fanout_name)


@dataclass(frozen=True)
class GeneratedModule:
    """The stub module of one source module: `pkg/mod.py` -> `pkg/mod_jobs.py`."""

    module: str  # dotted name of the source module, "pkg.mod"
    source_path: str  # relative to the package root, posix: "pkg/mod.py"
    source_hash: str  # hex sha256 of the source bytes
    regenerate_command: str
    runtime_alias: str
    jobs: tuple[JobSpec, ...]
    # Import statements the annotations need, guarded by TYPE_CHECKING so the
    # stubs never import the source module (or anything else) at run time.
    type_imports: tuple[str, ...]
    # An annotation spells `typing.Any` as `Any`, which the module imports.
    annotations_use_any: bool = False

    @property
    def needs_any(self) -> bool:
        return self.annotations_use_any or any(job.needs_any for job in self.jobs)

    @property
    def typing_names(self) -> str:
        """What to import from `typing`, or "" for nothing."""
        names: list[str] = []
        if self.type_imports:
            names.append("TYPE_CHECKING")
        if self.needs_any:
            names.append(ANY)
        return ", ".join(names)

    @property
    def exported_names(self) -> tuple[str, ...]:
        return tuple(name for job in self.jobs for name in job.exported_names)
