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
    """The kinds of parameter, in the order a signature has them."""

    POSITIONAL_ONLY = "positional-only"
    POSITIONAL_OR_KEYWORD = "positional-or-keyword"
    VAR_POSITIONAL = "*args"
    KEYWORD_ONLY = "keyword-only"
    VAR_KEYWORD = "**kwargs"


_POSITIONAL = (ParamKind.POSITIONAL_ONLY, ParamKind.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class Param:
    """One parameter of a job, as the stubs repeat it."""

    name: str
    annotation: str | None  # source text; None when the source has none
    default: str | None  # source text of the default; None when there is none
    kind: ParamKind = ParamKind.POSITIONAL_OR_KEYWORD
    # False: the default is not a literal; the stubs cannot repeat it (it may
    # name anything of the source module), so they hold a sentinel instead.
    literal: bool = True

    @property
    def type(self) -> str:
        return self.annotation if self.annotation is not None else ANY

    @property
    def sentinel(self) -> bool:
        """The stubs' default stands for the job's own, applied where it runs."""
        return self.default is not None and not self.literal

    def declaration(self, runtime_alias: str) -> str:
        """`a: int = 2`, as it appears in every stub's signature."""
        prefix = {ParamKind.VAR_POSITIONAL: "*", ParamKind.VAR_KEYWORD: "**"}
        text = f"{prefix.get(self.kind, '')}{self.name}: {self.type}"
        if self.default is None:
            return text
        if self.literal:
            return f"{text} = {self.default}"
        return f"{text} = {runtime_alias}.default({self.shown_default!r})"

    @property
    def shown_default(self) -> str:
        """The default's source text on one line, as the stubs show it."""
        text = self.default or ""
        if "\n" not in text:
            return text
        return " ".join(line.strip() for line in text.splitlines() if line.strip())


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
    is_async: bool = False  # `async def`: the worker runs it in an event loop

    @property
    def target(self) -> str:
        """The job by reference, `"pkg.mod:f"`: stubs never import `pkg.mod`."""
        return f"{self.module}:{self.name}"

    @property
    def returns(self) -> str:
        return self.returns_annotation if self.returns_annotation is not None else ANY

    def _of(self, *kinds: ParamKind) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind in kinds)

    @property
    def positional(self) -> tuple[Param, ...]:
        """The named parameters a call may fill by position."""
        return self._of(*_POSITIONAL)

    @property
    def var_positional(self) -> Param | None:
        found = self._of(ParamKind.VAR_POSITIONAL)
        return found[0] if found else None

    @property
    def keyword_only(self) -> tuple[Param, ...]:
        return self._of(ParamKind.KEYWORD_ONLY)

    @property
    def var_keyword(self) -> Param | None:
        found = self._of(ParamKind.VAR_KEYWORD)
        return found[0] if found else None

    @property
    def plain(self) -> bool:
        """Named positional parameters with literal defaults only: the call
        is a positional tuple, as the wire carries it fastest."""
        return all(p.kind in _POSITIONAL and not p.sentinel for p in self.params)

    @property
    def signature(self) -> str:
        """The job's own parameter list, `/` and `*` included as in the source."""
        return ", ".join(self.signature_parts)

    @property
    def signature_parts(self) -> tuple[str, ...]:
        """`signature`, one parameter (or `/`, `*`) an element."""
        parts: list[str] = []
        for i, param in enumerate(self.params):
            if param.kind is ParamKind.KEYWORD_ONLY and self.var_positional is None:
                if i == 0 or self.params[i - 1].kind is not ParamKind.KEYWORD_ONLY:
                    parts.append("*")
            parts.append(param.declaration(self.runtime_alias))
            is_last_posonly = param.kind is ParamKind.POSITIONAL_ONLY and (
                i + 1 == len(self.params)
                or self.params[i + 1].kind is not ParamKind.POSITIONAL_ONLY
            )
            if is_last_posonly:
                parts.append("/")
        return tuple(parts)

    @property
    def args_tuple(self) -> str:
        """The positional-arguments tuple the runtime receives: `(a, b)`."""
        names = [p.name for p in self.positional]
        star = self.var_positional
        if star is not None:
            if not names:
                return star.name
            names.append(f"*{star.name}")
        if len(names) == 1:
            return f"({names[0]},)"
        return "(" + ", ".join(names) + ")"

    @staticmethod
    def _kwargs_dict(keyword_only: tuple[Param, ...], var: Param | None) -> str:
        """The keyword arguments as a dict display, or "" when there are none."""
        entries = [f'"{p.name}": {p.name}' for p in keyword_only]
        if var is not None:
            if not entries:
                return var.name
            entries.append(f"**{var.name}")
        return "{" + ", ".join(entries) + "}" if entries else ""

    @property
    def call_args(self) -> str:
        """What a single-call stub passes after its `JobRef`."""
        return ", ".join(self.call_parts)

    @property
    def call_parts(self) -> tuple[str, ...]:
        """`call_args`, one argument an element."""
        if self.plain:
            return (self.args_tuple,)
        kwargs = self._kwargs_dict(self.keyword_only, self.var_keyword)
        if any(p.sentinel for p in self.params):
            # Arguments left at a sentinel are dropped by the ref, which
            # knows the names of the positional ones.
            return (f"*{self.ref_name}.omit({self.args_tuple}, {kwargs or 'None'})",)
        return (self.args_tuple, kwargs) if kwargs else (self.args_tuple,)

    @property
    def fanout_param(self) -> str:
        """The name of the fanout's items, clear of the job's own names."""
        name = "args_list"
        shared = (*self.keyword_only, *self._of(ParamKind.VAR_KEYWORD))
        while any(p.name == name for p in shared):
            name += "_"
        return name

    @property
    def fanout_signature(self) -> str:
        """`args_list: Iterable[...]`, then the job's keyword-only parameters
        and `**kwargs`, which apply to every item."""
        return ", ".join(self.fanout_signature_parts)

    @property
    def fanout_signature_parts(self) -> tuple[str, ...]:
        """`fanout_signature`, one parameter (or `/`, `*`) an element."""
        parts = [f"{self.fanout_param}: Iterable[{self.fanout_item_type}]"]
        if self.keyword_only or self.var_keyword is not None:
            # The items by position only: a shared keyword may have any name.
            parts.append("/")
            if self.keyword_only:
                parts.append("*")
            parts.extend(p.declaration(self.runtime_alias) for p in self.keyword_only)
            if self.var_keyword is not None:
                parts.append(self.var_keyword.declaration(self.runtime_alias))
        return tuple(parts)

    @property
    def fanout_args(self) -> str:
        """What the fanout stub passes after its `JobRef`."""
        return ", ".join(self.fanout_parts)

    @property
    def fanout_parts(self) -> tuple[str, ...]:
        """`fanout_args`, one argument an element."""
        kwargs = self._kwargs_dict(self.keyword_only, self.var_keyword)
        return (self.fanout_param, kwargs) if kwargs else (self.fanout_param,)

    @property
    def fanout_item_type(self) -> str:
        """One fanout element: the bare value for one parameter, else a tuple
        of any length the job accepts."""
        positional = self.positional
        if self.var_positional is not None:
            return "tuple[Any, ...]"
        if len(positional) == 1:
            return positional[0].type
        if not positional:
            return "tuple[()]"
        required = sum(1 for p in positional if p.default is None)
        options = [
            (
                "tuple[" + ", ".join(p.type for p in positional[:n]) + "]"
                if n
                else "tuple[()]"
            )
            for n in range(required, len(positional) + 1)
        ]
        return " | ".join(options)

    @property
    def fanout_function(self) -> str:
        """The runtime's fanout for this job: a one-parameter job's elements
        are its lone argument (`fanout_each`), others' are argument tuples."""
        single = len(self.positional) == 1 and self.var_positional is None
        return "fanout_each" if single else "fanout"

    @property
    def ref_expression(self) -> str:
        """`_lucidity.JobRef("pkg.mod:f", {"fanout": "random"})`."""
        return f"{self.runtime_alias}.JobRef({', '.join(self.ref_args)})"

    @property
    def ref_args(self) -> tuple[str, ...]:
        """The arguments of `ref_expression`'s call, one an element."""
        args = [f'"{self.target}"']
        if self.options:
            entries = ", ".join(f'"{name}": {value}' for name, value in self.options)
            args.append("{" + entries + "}")
        positional = self.positional
        if any(p.sentinel for p in positional):
            names = ", ".join(f'"{p.name}"' for p in positional)
            if len(positional) == 1:
                names += ","
            posonly = sum(1 for p in positional if p.kind is ParamKind.POSITIONAL_ONLY)
            args.append(f"names=({names})")
            if posonly:
                args.append(f"posonly={posonly}")
        return tuple(args)

    @property
    def defaults_note(self) -> str:
        """The docstring lines naming the defaults the stubs cannot repeat."""
        shown = [p for p in self.params if p.sentinel]
        if not shown:
            return ""
        lines = [f"\n\n    Defaults `{self.name}` applies where it runs:"]
        for p in shown:
            text = p.shown_default
            text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
            lines.append(f"\n    `{p.name}={text}`")
        return "".join(lines) + "\n    "

    @property
    def needs_any(self) -> bool:
        return (
            self.returns_annotation is None
            or self.var_positional is not None
            or any(p.annotation is None for p in self.params)
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
