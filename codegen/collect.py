"""Find the `@job` functions of one source file and model them as IR.

Jobs are found by *qualified name* (libcst's `QualifiedNameProvider`), so
`from lucidity import job as task`, `import lucidity as lu` + `@lu.job` and the
like are jobs, while a `job` that does not resolve to `lucidity.job` is not.

Everything a job's stubs cannot faithfully repeat is refused here, as a
`SourceError` pointing at the offending token: async functions, generators,
methods, nested functions, lambdas, `*args`, `**kwargs`, keyword-only
parameters, non-literal defaults, and options that are not literals or that
`lucidity._options.validate_options` rejects. Positional-only parameters are
kept as they are (the stubs repeat the `/`): the runtime passes arguments as a
positional tuple, which suits them.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import (
    CodeRange,
    MetadataWrapper,
    PositionProvider,
    QualifiedNameProvider,
)

from lucidity._options import OPTION_NAMES, OptionError, validate_options
from lucidity.codegen import imports
from lucidity.codegen.errors import SourceError
from lucidity.codegen.model import GeneratedModule, JobSpec, Param, ParamKind

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
    try:
        tree = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        return Collected(None, (_syntax_error(source, path, exc),))
    except (UnicodeDecodeError, SyntaxError) as exc:  # bad bytes or coding cookie
        message = f"cannot decode: {exc}; save the file as UTF-8 (or fix its coding)"
        return Collected(None, (SourceError(path, 1, 1, message),))
    wrapper = MetadataWrapper(tree, unsafe_skip_copy=True)
    finder = _JobFinder(path)
    wrapper.visit(finder)
    errors = list(finder.errors)
    if not finder.jobs:
        return Collected(None, tuple(errors))
    type_imports, uses_any, import_errors = imports.type_imports(
        [imports.Annotated(job.name, tuple(job.annotations)) for job in finder.jobs],
        imports.ImportTable.of(tree),
        module,
        path,
        wrapper.resolve(PositionProvider),
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
            )
            for job in finder.jobs
        ),
        type_imports=type_imports,
        annotations_use_any=uses_any,
    )
    return Collected(generated, ())


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
    # Annotation expressions, to find the names they need imported.
    annotations: list[cst.BaseExpression] = field(default_factory=list)


class _NotLiteral(Exception):
    """An option value `lucidity-gen` cannot evaluate without running code."""


class _JobFinder(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (QualifiedNameProvider, PositionProvider)

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.jobs: list[_FoundJob] = []
        self.errors: list[SourceError] = []
        self._scopes: list[str] = []  # "class" or "def", innermost last
        self._decorator_calls: set[int] = set()

    # ---- helpers

    def _is_job(self, expr: cst.BaseExpression) -> bool:
        # Every binding the name may have must be lucidity's: a module that
        # rebinds `job` (say `def job(f): ...` after the import) is not marking.
        names = self.get_metadata(QualifiedNameProvider, expr, set())
        return bool(names) and all(q.name == JOB_QUALIFIED_NAME for q in names)

    def _error(self, node: cst.CSTNode, message: str) -> None:
        where: CodeRange = self.get_metadata(PositionProvider, node)
        self.errors.append(
            SourceError(self.path, where.start.line, where.start.column + 1, message)
        )

    def _job_decorator(
        self, decorators: Sequence[cst.Decorator]
    ) -> tuple[cst.Decorator, cst.Call | None] | None:
        for decorator in decorators:
            expr = decorator.decorator
            call = expr if isinstance(expr, cst.Call) else None
            if self._is_job(call.func if call is not None else expr):
                if call is not None:
                    self._decorator_calls.add(id(call))
                return decorator, call
        return None

    # ---- scopes

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        found = self._job_decorator(node.decorators)
        if found is not None:
            self._error(
                found[0],
                f"@job applied to class {node.name.value!r}; only module-level "
                "def functions can be jobs",
            )
        self._scopes.append("class")

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self._scopes.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        found = self._job_decorator(node.decorators)
        if found is not None:
            self._job(node, found[1])
        self._scopes.append("def")

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self._scopes.pop()

    def visit_Call(self, node: cst.Call) -> None:
        # `job(...)` called directly rather than as a decorator: `f = job(lambda
        # x: x)`, `f = job(fanout="random")(g)`. Options alone (`job(memory=...)`)
        # only build a decorator, which is harmless here.
        if id(node) in self._decorator_calls:
            return
        func = node.func
        applies_job = self._is_job(func) or (
            isinstance(func, cst.Call) and self._is_job(func.func)
        )
        if not applies_job:
            return
        for arg in node.args:
            if arg.keyword is not None or arg.star:
                continue
            if isinstance(arg.value, cst.Lambda):
                self._error(
                    arg.value,
                    "@job applied to a lambda; jobs are run by reference "
                    "('pkg.mod:f'): define a module-level def and decorate it "
                    "with @job",
                )
            else:
                self._error(
                    node,
                    "job(...) called directly; lucidity-gen only sees @job used as "
                    "a decorator: put @job above a module-level def",
                )

    # ---- one job

    def _job(self, node: cst.FunctionDef, call: cst.Call | None) -> None:
        name = node.name.value
        before = len(self.errors)
        if self._scopes and self._scopes[-1] == "class":
            self._error(
                node,
                f"@job function {name!r} is a method; only module-level functions "
                "can be jobs (they are run by reference): move it out of the class",
            )
        elif self._scopes:
            self._error(
                node,
                f"@job function {name!r} is nested inside a function; only "
                "module-level functions can be jobs (they are run by reference): "
                "move it to the module level",
            )
        if node.asynchronous is not None:
            self._error(
                node,
                f"@job function {name!r} is async def; jobs must be plain def "
                "functions (call asyncio.run inside the job if it needs a loop)",
            )
        yield_node = _first_yield(node.body)
        if yield_node is not None:
            self._error(
                yield_node,
                f"@job function {name!r} is a generator; jobs must return their "
                "result: return a list instead of yielding",
            )
        params = self._params(node)
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
        self.jobs.append(
            _FoundJob(
                name=name,
                params=params,
                returns=_code(returns) if returns is not None else None,
                options=options,
                annotations=annotations,
            )
        )

    def _params(self, node: cst.FunctionDef) -> tuple[Param, ...]:
        name = node.name.value
        params = node.params
        if isinstance(params.star_arg, cst.Param):
            self._error(
                params.star_arg,
                f"@job function {name!r} takes *{params.star_arg.name.value}; "
                "jobs need explicit parameters",
            )
        if params.star_kwarg is not None:
            self._error(
                params.star_kwarg,
                f"@job function {name!r} takes **{params.star_kwarg.name.value}; "
                "jobs need explicit parameters",
            )
        if params.kwonly_params:
            first = params.kwonly_params[0]
            self._error(
                first,
                f"@job function {name!r} has keyword-only parameter "
                f"{first.name.value!r}; jobs take positional arguments (a fanout "
                "passes tuples): move it before the '*'",
            )
        out: list[Param] = []
        for kind, group in (
            (ParamKind.POSITIONAL_ONLY, params.posonly_params),
            (ParamKind.POSITIONAL_OR_KEYWORD, params.params),
        ):
            for param in group:
                default = None
                if param.default is not None:
                    offender = _non_literal(param.default)
                    if offender is None:
                        default = _code(param.default)
                    else:
                        self._error(
                            offender,
                            f"default of parameter {param.name.value!r} of @job "
                            f"function {name!r} is not a literal; defaults of jobs "
                            "must be literals (numbers, strings, bytes, None, "
                            "True, False or tuples of these) so the stubs can "
                            "repeat them",
                        )
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
                value = _evaluate(arg.value)
            except _NotLiteral:
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


class _YieldFinder(cst.CSTVisitor):
    """The first `yield` of a function body itself, not of the defs inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: cst.CSTNode | None = None

    def visit_Yield(self, node: cst.Yield) -> bool:
        if self.found is None:
            self.found = node
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False


def _first_yield(body: cst.BaseSuite) -> cst.CSTNode | None:
    finder = _YieldFinder()
    body.visit(finder)
    return finder.found


def _non_literal(expr: cst.BaseExpression) -> cst.CSTNode | None:
    """The part of a default that is not a literal, or None if it all is."""
    if isinstance(expr, (cst.Integer, cst.Float, cst.Imaginary, cst.SimpleString)):
        return None
    if isinstance(expr, cst.ConcatenatedString):
        # evaluated_value is None when a part is an f-string.
        return None if expr.evaluated_value is not None else expr
    if isinstance(expr, cst.Name):
        return None if expr.value in ("None", "True", "False") else expr
    if isinstance(expr, cst.UnaryOperation):
        number = isinstance(expr.operator, (cst.Minus, cst.Plus)) and isinstance(
            expr.expression, (cst.Integer, cst.Float, cst.Imaginary)
        )
        return None if number else expr
    if isinstance(expr, cst.Tuple):
        for element in expr.elements:
            if not isinstance(element, cst.Element):  # `*rest`
                return element
            offender = _non_literal(element.value)
            if offender is not None:
                return offender
        return None
    return expr


def _evaluate(expr: cst.BaseExpression) -> object:
    """The value of an option: a literal, or + - * // ** over number literals."""
    if isinstance(expr, (cst.Integer, cst.Float)):
        return expr.evaluated_value
    if isinstance(expr, (cst.SimpleString, cst.ConcatenatedString)):
        value = expr.evaluated_value
        if value is None:
            raise _NotLiteral
        return value
    if isinstance(expr, cst.Name) and expr.value in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[expr.value]
    if isinstance(expr, cst.UnaryOperation):
        operand = _number(_evaluate(expr.expression))
        if isinstance(expr.operator, cst.Minus):
            return -operand
        if isinstance(expr.operator, cst.Plus):
            return +operand
        raise _NotLiteral
    if isinstance(expr, cst.BinaryOperation):
        left = _number(_evaluate(expr.left))
        right = _number(_evaluate(expr.right))
        op = expr.operator
        if isinstance(op, cst.Add):
            return left + right
        if isinstance(op, cst.Subtract):
            return left - right
        if isinstance(op, cst.Multiply):
            return left * right
        if isinstance(op, cst.FloorDivide) and right != 0:
            return left // right
        # A bounded exponent: `2 ** 30` is a size, `9 ** 9 ** 9` is a hang.
        if isinstance(op, cst.Power) and isinstance(right, int) and 0 <= right <= 256:
            return left**right
    raise _NotLiteral


def _number(value: object) -> int | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise _NotLiteral


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
