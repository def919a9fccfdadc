"""What the stubs' annotations need imported, found from the source's imports.

The stubs repeat each job's annotations as written, but must not import the
source module at run time. So, with `from __future__ import annotations`, they
import under `if TYPE_CHECKING:` exactly what the annotations name: the
source's own import statement for an imported name (relative imports work
unchanged, the stubs being siblings), and `from pkg.mod import Name` for a
name the source module defines itself. `module_names` picks the names the
stubs bind themselves so that no annotation or parameter shadows them.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import libcst as cst
from libcst.metadata import CodeRange

from lucidity.codegen.errors import SourceError
from lucidity.codegen.model import ANY, Param

__all__ = [
    "OWN_NAMES",
    "Annotated",
    "AnnotationNames",
    "ImportTable",
    "annotation_names",
    "module_names",
    "type_imports",
]

_EMPTY = cst.Module(body=[])
_BUILTINS = frozenset(dir(builtins))

# Names the generated module binds itself, with the imports that bind them to
# the very same object: a source annotation spelled with one of these names is
# fine when it means the same thing, and a clash otherwise.
OWN_NAMES: dict[str, frozenset[str]] = {
    "annotations": frozenset(),
    "TYPE_CHECKING": frozenset({"from typing import TYPE_CHECKING"}),
    ANY: frozenset({"from typing import Any", "from typing_extensions import Any"}),
    "Iterable": frozenset(
        {"from collections.abc import Iterable", "from typing import Iterable"}
    ),
    "Job": frozenset({"from lucidity import Job"}),
}


class _Positions(Protocol):
    """Where a node is (looked up only for an error)."""

    def __getitem__(self, node: cst.CSTNode, /) -> CodeRange: ...


class _Named(Protocol):
    """A job as `module_names` sees it."""

    @property
    def name(self) -> str: ...
    @property
    def params(self) -> Sequence[Param]: ...
    @property
    def annotations(self) -> Sequence[cst.BaseExpression]: ...


@dataclass(frozen=True)
class Annotated:
    """One job's name and the annotation expressions of its signature."""

    job: str
    annotations: tuple[cst.BaseExpression, ...]


def _code(node: cst.CSTNode) -> str:
    return _EMPTY.code_for_node(node)


@dataclass
class ImportTable:
    """Module-level bindings of the source: name -> the imports that bind it.

    A name bound by the module itself (def, class, assignment) maps to None: the
    stubs import it from the source module, under TYPE_CHECKING only.
    """

    bindings: dict[str, list[str] | None]
    # Each import statement's rank in the source, to repeat them in its order.
    order: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, tree: cst.Module) -> ImportTable:
        table = cls({})
        table._statements(tree.body)
        return table

    def _statements(self, body: Sequence[cst.CSTNode]) -> None:
        for stmt in body:
            if isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    self._small(small)
            elif isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
                self.bindings[stmt.name.value] = None
            elif isinstance(stmt, (cst.If, cst.Try, cst.With)):
                # `if TYPE_CHECKING:` and `try: import x` bind at module level too.
                for block in _blocks(stmt):
                    self._statements(block)

    def _rank(self, statement: str) -> str:
        self.order.setdefault(statement, len(self.order))
        return statement

    def _small(self, small: cst.BaseSmallStatement) -> None:
        if isinstance(small, cst.Import):
            for alias in small.names:
                dotted = _code(alias.name)
                if alias.asname is not None:
                    bound = _code(alias.asname.name)
                    self.bindings[bound] = [self._rank(f"import {dotted} as {bound}")]
                else:
                    root = dotted.split(".")[0]
                    existing = self.bindings.get(root)
                    statement = self._rank(f"import {dotted}")
                    if existing is not None and statement not in existing:
                        existing.append(statement)
                    else:
                        self.bindings[root] = [statement]
        elif isinstance(small, cst.ImportFrom):
            module = "." * len(small.relative) + (
                _code(small.module) if small.module is not None else ""
            )
            if module == "__future__" or isinstance(small.names, cst.ImportStar):
                return
            for alias in small.names:
                name = _code(alias.name)
                if alias.asname is not None:
                    bound = _code(alias.asname.name)
                    statement = f"from {module} import {name} as {bound}"
                else:
                    bound, statement = name, f"from {module} import {name}"
                self.bindings[bound] = [self._rank(statement)]
        elif isinstance(small, cst.Assign):
            for target in small.targets:
                for bound in _bound_names(target.target):
                    self.bindings[bound] = None
        elif isinstance(small, (cst.AnnAssign, cst.AugAssign)):
            for bound in _bound_names(small.target):
                self.bindings[bound] = None
        elif isinstance(small, cst.TypeAlias):  # `type X = ...` (3.12)
            self.bindings[small.name.value] = None


def _blocks(stmt: cst.If | cst.Try | cst.With) -> Iterator[Sequence[cst.CSTNode]]:
    yield stmt.body.body
    if isinstance(stmt, cst.If):
        orelse = stmt.orelse
        if isinstance(orelse, cst.If):
            yield from _blocks(orelse)
        elif orelse is not None:
            yield orelse.body.body
    elif isinstance(stmt, cst.Try):
        for handler in stmt.handlers:
            yield handler.body.body
        if stmt.orelse is not None:
            yield stmt.orelse.body.body
        if stmt.finalbody is not None:
            yield stmt.finalbody.body.body


def _bound_names(target: cst.BaseExpression) -> Iterator[str]:
    if isinstance(target, cst.Name):
        yield target.value
    elif isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            yield from _bound_names(element.value)


class AnnotationNames(cst.CSTVisitor):
    """The root names an annotation uses: `Decimal`, `np` in `np.ndarray`.

    Forward references (`"Point"`) are parsed and searched too, except the
    strings of `Literal[...]` and the metadata of `Annotated[...]`.
    """

    def __init__(self) -> None:
        super().__init__()
        # (name, where it is written): a forward reference's names are
        # reported at the string holding them.
        self.names: list[tuple[str, cst.CSTNode]] = []
        self._anchor: cst.CSTNode | None = None

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)
        return False

    def visit_Name(self, node: cst.Name) -> None:
        self.names.append((node.value, self._anchor or node))

    def visit_Subscript(self, node: cst.Subscript) -> bool:
        head = node.value
        last = head.attr.value if isinstance(head, cst.Attribute) else None
        if isinstance(head, cst.Name):
            last = head.value
        head.visit(self)
        for i, element in enumerate(node.slice):
            if last == "Literal" or (last == "Annotated" and i > 0):
                element.visit(_NonStringNames(self))
            else:
                element.visit(self)
        return False

    def visit_SimpleString(self, node: cst.SimpleString) -> None:
        value = node.evaluated_value
        if isinstance(value, str):
            try:
                parsed = cst.parse_expression(value.strip())
            except cst.ParserSyntaxError:
                return
            outer, self._anchor = self._anchor, self._anchor or node
            parsed.visit(self)
            self._anchor = outer


class _NonStringNames(cst.CSTVisitor):
    """Names inside a `Literal[...]`/`Annotated` metadata element, strings skipped."""

    def __init__(self, outer: AnnotationNames) -> None:
        super().__init__()
        self.outer = outer

    def visit_SimpleString(self, node: cst.SimpleString) -> bool:
        return False

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)
        return False

    def visit_Name(self, node: cst.Name) -> None:
        self.outer.names.append((node.value, self.outer._anchor or node))


def annotation_names(
    annotations: Sequence[cst.BaseExpression],
) -> list[tuple[str, cst.CSTNode]]:
    """Every root name the annotations use, with the node to report it at."""
    finder = AnnotationNames()
    for annotation in annotations:
        annotation.visit(finder)
    return finder.names


def type_imports(
    jobs: Sequence[Annotated],
    table: ImportTable,
    module: str,
    path: str,
    positions: _Positions,
) -> tuple[tuple[str, ...], bool, list[SourceError]]:
    """The TYPE_CHECKING imports of the stubs, whether they use `Any`, and errors.

    Imports come in the source's order, then one `from <module> import ...`
    for the names the source module defines itself.
    """
    statements: set[str] = set()
    local: set[str] = set()
    uses_any = False
    errors: list[SourceError] = []
    for job in jobs:
        for name, node in annotation_names(job.annotations):
            binding = table.bindings.get(name, [])
            if name not in table.bindings and name in _BUILTINS:
                continue
            if name in OWN_NAMES:
                if binding and set(binding) <= OWN_NAMES[name]:
                    uses_any = uses_any or name == ANY
                    continue
                where = positions[node].start
                errors.append(
                    SourceError(
                        path,
                        where.line,
                        where.column + 1,
                        f"@job function {job.job!r}: annotation name {name!r} "
                        "clashes with a name the generated module defines; import "
                        "it under another name",
                    )
                )
            elif binding:
                statements.update(binding)
            else:
                # Defined by the module itself (or unknown, e.g. star-imported):
                # import it from the source module, for the type checker only.
                local.add(name)
    ordered = sorted(statements, key=lambda s: table.order[s])
    if local:
        ordered.append(f"from {module} import {', '.join(sorted(local))}")
    return tuple(ordered), uses_any, errors


def module_names(jobs: Sequence[_Named]) -> tuple[str, dict[str, str]]:
    """Module-level names no parameter or annotation can shadow.

    A stub's body reads the runtime alias and its job's `JobRef` as globals, so
    neither may equal a parameter of any stub, an imported annotation name, or
    another generated name; a clash is avoided by appending underscores.
    """
    taken = set(OWN_NAMES)
    for job in jobs:
        taken.update(p.name for p in job.params)
        taken.update(name for name, _ in annotation_names(job.annotations))
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
