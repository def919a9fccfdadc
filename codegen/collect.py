"""Find the `@job` functions of one source file and model them as IR.

Jobs are found by *qualified name*, resolved from what can decorate a
module-level function: the module's imports and assignments above it, in
order (`lucidity.codegen.marks.Marks`). So `from lucidity import job as task`, `import lucidity as
lu` + `@lu.job` and the like are jobs, while a `job` that does not resolve to
`lucidity.job` (a foreign import, or a rebinding above the def) is not. No
scope analysis of function bodies is needed, which is most of what a full
resolution (libcst's `QualifiedNameProvider`) costs.

Every module-level `def` and `async def` can be a job, with any parameters
and defaults (a default that is not a literal becomes a sentinel in the
stubs). What cannot be is refused here, as a `SourceError` pointing at the
offending token: generators, methods, nested functions, lambdas, functions a
later statement of the module replaces, and options that are not literals or
that `lucidity._options.validate_options` rejects.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from lucidity._options import OPTION_NAMES, OptionError, validate_options
from lucidity.codegen import imports
from lucidity.codegen.errors import SourceError
from lucidity.codegen.literals import NotLiteral, evaluate, non_literal
from lucidity.codegen.marks import (
    DirectCalls,
    Marks,
    blocks,
    bound_names,
    direct_call_pattern,
    dotted,
    statements,
)
from lucidity.codegen.model import GeneratedModule, JobSpec, Param, ParamKind
from lucidity.codegen.skim import skim
from lucidity.codegen.yields import Yields, first_yield

__all__ = ["JOB_QUALIFIED_NAME", "Collected", "collect"]

JOB_QUALIFIED_NAME = "lucidity.job"

_EMPTY = cst.Module(body=[])


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
        return Collected(None, (_syntax_error(source, path, exc),))
    except (UnicodeDecodeError, SyntaxError) as exc:  # bad bytes or coding cookie
        message = f"cannot decode: {exc}; save the file as UTF-8 (or fix its coding)"
        return Collected(None, (SourceError(path, 1, 1, message),))
    text = source.decode(tree.encoding, errors="replace")
    if skimmed is None:
        yields = Yields(source, text)
    else:
        yields = Yields(source, text, skimmed.tree, skimmed.elided)
    finder = _JobFinder(path, direct_call_pattern(text), yields)
    finder.walk(tree.body, Marks(set(), set()), None)
    if skimmed is not None and finder.searched_bodies:
        # A job's body was searched for `yield` in libcst's tree, where it
        # may be blanked: only the whole source can answer.
        return _collect(source, path, module, source_path, regenerate_command, False)
    positions = _Positions(tree)
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
    alias, refs = _module_names(finder.jobs)
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


class _Positions:
    """Where nodes are, worked out on first use: only files with errors pay
    for the pass over the whole tree that positions take."""

    def __init__(self, tree: cst.Module) -> None:
        self._tree = tree
        self._ranges: Mapping[cst.CSTNode, CodeRange] | None = None

    def __getitem__(self, node: cst.CSTNode) -> CodeRange:
        if self._ranges is None:
            wrapper = MetadataWrapper(self._tree, unsafe_skip_copy=True)
            self._ranges = wrapper.resolve(PositionProvider)
        return self._ranges[node]

    def error(
        self, path: str, node: cst.CSTNode | tuple[int, int], message: str
    ) -> SourceError:
        if isinstance(node, tuple):
            return SourceError(path, node[0], node[1], message)
        where = self[node].start
        return SourceError(path, where.line, where.column + 1, message)


def _syntax_error(source: bytes, path: str, exc: cst.ParserSyntaxError) -> SourceError:
    # CPython's own parser places the caret better than libcst's does (libcst
    # reports where it gave up, often the next line); prefer it when it agrees
    # that the file is broken.
    try:
        compile(source, path, "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError as err:
        if err.lineno is not None:
            message = err.msg
            return SourceError(
                path,
                err.lineno,
                max(err.offset or 1, 1),
                f"cannot parse: {message}; fix the syntax error and run again",
            )
    except (ValueError, UnicodeDecodeError):
        pass
    detail = exc.message.splitlines()[0] if exc.message else "invalid syntax"
    return SourceError(
        path,
        exc.raw_line,
        exc.raw_column + 1,
        f"cannot parse: {detail}; fix the syntax error and run again",
    )


# --------------------------------------------------------------------------- jobs


@dataclass
class _FoundJob:
    """A job as found, before the module-wide naming decisions."""

    name: str
    params: tuple[Param, ...]
    returns: str | None
    options: tuple[tuple[str, str], ...]
    is_async: bool = False
    # Annotation expressions, to find the names they need imported.
    annotations: list[cst.BaseExpression] = field(default_factory=list)


# Decorators that leave a module attribute that is not called with the
# function's parameters (or not a function at all): stacked with @job, the
# worker would not run what the stubs describe.
_NOT_CALLABLE_AS_IS = frozenset(
    {
        "property",
        "staticmethod",
        "classmethod",
        "contextmanager",
        "asynccontextmanager",
        "overload",
    }
)


class _JobFinder:
    """Walks a module's statements (not its expressions) for `@job`."""

    def __init__(
        self,
        path: str,
        direct_calls: re.Pattern[str] | None,
        yields: Yields | None = None,
    ) -> None:
        self.path = path
        # Where the defs' yields are; a def it does not know is searched.
        self._yields = yields
        self.searched_bodies = False  # a def's body searched for `yield`
        self._defs = 0
        self.jobs: list[_FoundJob] = []
        # (node to point at, message): placed once the walk is over, and
        # only when there are any (positions cost a pass over the tree).
        self.errors: list[tuple[cst.CSTNode | tuple[int, int], str]] = []
        self._direct_calls = direct_calls
        # The module-level names of jobs (name -> its def), to tell when a
        # later statement replaces one.
        self._defined: dict[str, cst.FunctionDef] = {}

    # ---- helpers

    def _error(self, node: cst.CSTNode | tuple[int, int], message: str) -> None:
        self.errors.append((node, message))

    def _job_decorator(
        self, decorators: Sequence[cst.Decorator], marks: Marks
    ) -> tuple[cst.Decorator, cst.Call | None] | None:
        if not marks:
            return None
        for decorator in decorators:
            expr = decorator.decorator
            call = expr if isinstance(expr, cst.Call) else None
            if marks.is_job(call.func if call is not None else expr):
                return decorator, call
        return None

    # ---- statements

    def walk(
        self, body: Sequence[cst.CSTNode], marks: Marks, scope: str | None
    ) -> None:
        """The statements of one block, in order; `scope` is None at module
        level (including its if/try/with blocks), else "def" or "class"."""
        for stmt in body:
            if isinstance(stmt, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
                self._scan(stmt, marks)
                for small in stmt.body:
                    if scope is None:
                        self._replaced(small)
                    marks.bind(small)
            elif isinstance(stmt, cst.FunctionDef):
                self._function(stmt, marks, scope)
            elif isinstance(stmt, cst.ClassDef):
                found = self._job_decorator(stmt.decorators, marks)
                if found is not None:
                    self._error(
                        found[0],
                        f"@job applied to class {stmt.name.value!r}; only "
                        "module-level def functions can be jobs",
                    )
                self._rebound(stmt.name.value, stmt, scope)
                self.walk(statements(stmt.body), marks.copy(), "class")
                marks.unbind(stmt.name.value)
            else:
                self._compound(stmt, marks, scope)

    def _function(self, node: cst.FunctionDef, marks: Marks, scope: str | None) -> None:
        name = node.name.value
        index, self._defs = self._defs, self._defs + 1
        found = self._job_decorator(node.decorators, marks)
        if found is None:
            self._rebound(name, node, scope)
        else:
            self._job(node, found, scope, index)
        inner = marks.copy()
        for param in _all_params(node.params):
            inner.unbind(param.name.value)
        self.walk(statements(node.body), inner, "def")
        marks.unbind(name)

    def _compound(self, stmt: cst.CSTNode, marks: Marks, scope: str | None) -> None:
        """if/for/while/try/with/match: their blocks bind in this scope."""
        if isinstance(stmt, (cst.If, cst.While)):
            self._scan(stmt.test, marks)
        elif isinstance(stmt, cst.For):
            self._scan(stmt.iter, marks)
            for bound in bound_names(stmt.target):
                marks.unbind(bound)
        elif isinstance(stmt, cst.With):
            for item in stmt.items:
                self._scan(item.item, marks)
                if item.asname is not None:
                    for bound in bound_names(item.asname.name):
                        marks.unbind(bound)
        for block in blocks(stmt):
            self.walk(block, marks, scope)
        if isinstance(stmt, (cst.Try, cst.TryStar)):
            for handler in stmt.handlers:
                if handler.name is not None:
                    for bound in bound_names(handler.name.name):
                        marks.unbind(bound)

    def _scan(self, node: cst.CSTNode, marks: Marks) -> None:
        # Direct calls of `job(...)` are looked for only in files whose text
        # has one (the pattern of the names ever bound to it): visiting every
        # expression of every file would cost as much as parsing it.
        if self._direct_calls is not None and marks:
            node.visit(DirectCalls(self._error, marks))

    # ---- later statements replacing a job (C accelerators, mostly)

    def _rebound(self, name: str, node: cst.CSTNode, scope: str | None) -> None:
        if scope is None and name in self._defined:
            self._replaced_by(name, node, f"a later definition of {name!r}")

    def _replaced(self, small: cst.BaseSmallStatement) -> None:
        if not self._defined:
            return
        if isinstance(small, cst.ImportFrom) and isinstance(
            small.names, cst.ImportStar
        ):
            for name in list(self._defined):
                self._replaced_by(
                    name,
                    small,
                    f"{_code(small)!r}, which may replace it (as a C accelerator "
                    "module does)",
                )
            return
        names: list[str] = []
        if isinstance(small, (cst.Import, cst.ImportFrom)) and not isinstance(
            small.names, cst.ImportStar
        ):
            for alias in small.names:
                if alias.asname is not None:
                    names.extend(bound_names(alias.asname.name))
                elif isinstance(small, cst.Import):
                    names.append(dotted(alias.name).split(".")[0])
                else:
                    names.append(_code(alias.name))
        elif isinstance(small, cst.Assign):
            for target in small.targets:
                names.extend(bound_names(target.target))
        elif isinstance(small, (cst.AnnAssign, cst.AugAssign)):
            names.extend(bound_names(small.target))
        for name in names:
            if name in self._defined:
                self._replaced_by(name, small, f"{_code(small)!r}")

    def _replaced_by(self, name: str, node: cst.CSTNode, what: str) -> None:
        del self._defined[name]
        self.jobs = [job for job in self.jobs if job.name != name]
        self._error(
            node,
            f"@job function {name!r} is replaced after its def by {what}: "
            "workers run the module attribute, which is then not this function; "
            "mark the function that stays (or move the def after this statement)",
        )

    # ---- one job

    def _job(
        self,
        node: cst.FunctionDef,
        found: tuple[cst.Decorator, cst.Call | None],
        scope: str | None,
        index: int = -1,
    ) -> None:
        name = node.name.value
        before = len(self.errors)
        if scope == "class":
            self._error(
                node,
                f"@job function {name!r} is a method; only module-level functions "
                "can be jobs (they are run by reference): move it out of the class",
            )
        elif scope is not None:
            self._error(
                node,
                f"@job function {name!r} is nested inside a function; only "
                "module-level functions can be jobs (they are run by reference): "
                "move it to the module level",
            )
        yield_node: cst.CSTNode | tuple[int, int] | None
        yields = self._yields
        if yields is not None and yields.knows(index, name):
            yield_node = yields.first(index)
        else:
            self.searched_bodies = True
            yield_node = first_yield(node.body)
        if yield_node is not None:
            self._error(
                yield_node,
                f"@job function {name!r} is a generator; jobs must return their "
                "result: return a list instead of yielding",
            )
        for decorator in node.decorators:
            expr = decorator.decorator
            last = expr.attr.value if isinstance(expr, cst.Attribute) else None
            if isinstance(expr, cst.Name):
                last = expr.value
            if last in _NOT_CALLABLE_AS_IS:
                self._error(
                    decorator,
                    f"@job function {name!r} is also decorated @{last}, which "
                    "makes the module attribute something other than a function "
                    "called with these parameters; put @job on a plain function "
                    "and call that one",
                )
        params = self._params(node)
        call = found[1]
        options = self._options(call) if call is not None else ()
        if len(self.errors) > before:
            return
        returns = node.returns.annotation if node.returns is not None else None
        annotations = [
            p.annotation.annotation
            for p in _all_params(node.params)
            if p.annotation is not None
        ]
        if returns is not None:
            annotations.append(returns)
        if scope is None:
            if name in self._defined:
                # Defined again (another branch of an `if`, mostly): the
                # module attribute is the last definition.
                self.jobs = [job for job in self.jobs if job.name != name]
            self._defined[name] = node
        self.jobs.append(
            _FoundJob(
                name=name,
                params=params,
                returns=_code(returns) if returns is not None else None,
                options=options,
                is_async=node.asynchronous is not None,
                annotations=annotations,
            )
        )

    def _params(self, node: cst.FunctionDef) -> tuple[Param, ...]:
        params = node.params
        out: list[Param] = []
        groups: list[tuple[ParamKind, Sequence[cst.Param]]] = [
            (ParamKind.POSITIONAL_ONLY, params.posonly_params),
            (ParamKind.POSITIONAL_OR_KEYWORD, params.params),
        ]
        if isinstance(params.star_arg, cst.Param):
            groups.append((ParamKind.VAR_POSITIONAL, [params.star_arg]))
        groups.append((ParamKind.KEYWORD_ONLY, params.kwonly_params))
        if params.star_kwarg is not None:
            groups.append((ParamKind.VAR_KEYWORD, [params.star_kwarg]))
        for kind, group in groups:
            for param in group:
                default = literal = None
                if param.default is not None:
                    default = _code(param.default)
                    literal = non_literal(param.default) is None
                annotation = param.annotation
                out.append(
                    Param(
                        name=param.name.value,
                        annotation=(
                            _code(annotation.annotation)
                            if annotation is not None
                            else None
                        ),
                        default=default,
                        kind=kind,
                        literal=literal is not False,
                    )
                )
        return tuple(out)

    def _options(self, call: cst.Call) -> tuple[tuple[str, str], ...]:
        values: dict[str, object] = {}
        texts: dict[str, str] = {}
        for arg in call.args:
            if arg.star:
                self._error(
                    arg,
                    "@job options cannot be unpacked with ** here; write each "
                    "option as name=literal so lucidity-gen can check it",
                )
                continue
            if arg.keyword is None:
                self._error(
                    arg,
                    "@job takes options as keywords only, e.g. "
                    '@job(fanout="random")',
                )
                continue
            option = arg.keyword.value
            if option in values:
                self._error(arg.keyword, f"@job option {option!r} is given twice")
                continue
            try:
                value = evaluate(arg.value)
            except NotLiteral:
                self._error(
                    arg.value,
                    f"@job option {option}={_code(arg.value)} is not a literal; "
                    "options must be literals (numbers, strings, None, or + - * "
                    "// ** on numbers) so lucidity-gen can check them",
                )
                continue
            try:
                validate_options({option: value})
            except OptionError as exc:
                where = arg.value if option in OPTION_NAMES else arg.keyword
                self._error(where, str(exc))
                continue
            values[option] = value
            text = _code(arg.value)
            texts[option] = (
                text if "#" not in text and "\n" not in text else repr(value)
            )
        # Only the options that differ from the defaults, in OPTION_NAMES order.
        kept = validate_options(values).as_dict()
        return tuple((option, texts[option]) for option in kept)


def _all_params(params: cst.Parameters) -> Iterator[cst.Param]:
    yield from params.posonly_params
    yield from params.params
    if isinstance(params.star_arg, cst.Param):
        yield params.star_arg
    yield from params.kwonly_params
    if params.star_kwarg is not None:
        yield params.star_kwarg


def _code(node: cst.CSTNode) -> str:
    return _EMPTY.code_for_node(node)


def _module_names(jobs: Sequence[_FoundJob]) -> tuple[str, dict[str, str]]:
    """Module-level names no parameter or annotation can shadow.

    A stub's body reads the runtime alias and its job's `JobRef` as globals, so
    neither may equal a parameter of any stub, an imported annotation name, or
    another generated name; a clash is avoided by appending underscores.
    """
    taken = set(imports.OWN_NAMES)
    for job in jobs:
        taken.update(p.name for p in job.params)
        taken.update(name for name, _ in imports.annotation_names(job.annotations))
        taken.update(
            f"{job.name}{suffix}"
            for suffix in (
                "_local",
                "_remote",
                "_local_async",
                "_remote_async",
                "_remote_fanout",
            )
        )
    alias = "_lucidity"
    while alias in taken:
        alias += "_"
    taken.add(alias)
    refs: dict[str, str] = {}
    for job in jobs:
        ref = f"_{job.name}"
        while ref in taken:
            ref += "_"
        taken.add(ref)
        refs[job.name] = ref
    return alias, refs
