"""A job's signature and its `@job(...)` options, from libcst nodes to IR.

`params` turns a function's parameters into `Param`s (kind, annotation and
default as source text; whether the default is a literal). `options` checks
the literal options of a `@job(...)` call against
`lucidity._options.validate_options` and keeps those that differ from the
defaults; what it refuses goes to the caller's `error(node, message)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import libcst as cst

from lucidity._options import OPTION_NAMES, OptionError, validate_options
from lucidity.codegen.literals import NotLiteral, evaluate, non_literal
from lucidity.codegen.model import Param, ParamKind

__all__ = ["all_params", "code", "options", "params"]

_EMPTY = cst.Module(body=[])

Report = Callable[[cst.CSTNode, str], None]


def code(node: cst.CSTNode) -> str:
    """A node's source text."""
    return _EMPTY.code_for_node(node)


def all_params(params: cst.Parameters) -> Iterator[cst.Param]:
    """Every parameter, in signature order."""
    yield from params.posonly_params
    yield from params.params
    if isinstance(params.star_arg, cst.Param):
        yield params.star_arg
    yield from params.kwonly_params
    if params.star_kwarg is not None:
        yield params.star_kwarg


def params(params: cst.Parameters) -> tuple[Param, ...]:
    """The IR of a function's parameters, in signature order."""
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
                default = code(param.default)
                literal = non_literal(param.default) is None
            annotation = param.annotation
            out.append(
                Param(
                    name=param.name.value,
                    annotation=(
                        code(annotation.annotation) if annotation is not None else None
                    ),
                    default=default,
                    kind=kind,
                    literal=literal is not False,
                )
            )
    return tuple(out)


def options(call: cst.Call, error: Report) -> tuple[tuple[str, str], ...]:
    """The options of `@job(...)` that differ from the defaults, as (name,
    source text) in OPTION_NAMES order; each refused one is reported."""
    values: dict[str, object] = {}
    texts: dict[str, str] = {}
    for arg in call.args:
        if arg.star:
            error(
                arg,
                "@job options cannot be unpacked with ** here; write each "
                "option as name=literal so lucidity-gen can check it",
            )
            continue
        if arg.keyword is None:
            error(
                arg,
                '@job takes options as keywords only, e.g. @job(fanout="random")',
            )
            continue
        option = arg.keyword.value
        if option in values:
            error(arg.keyword, f"@job option {option!r} is given twice")
            continue
        try:
            value = evaluate(arg.value)
        except NotLiteral:
            error(
                arg.value,
                f"@job option {option}={code(arg.value)} is not a literal; "
                "options must be literals (numbers, strings, None, or + - * "
                "// ** on numbers) so lucidity-gen can check them",
            )
            continue
        try:
            validate_options({option: value})
        except OptionError as exc:
            error(arg.value if option in OPTION_NAMES else arg.keyword, str(exc))
            continue
        values[option] = value
        text = code(arg.value)
        texts[option] = text if "#" not in text and "\n" not in text else repr(value)
    # Only the options that differ from the defaults, in OPTION_NAMES order.
    kept = validate_options(values).as_dict()
    return tuple((option, texts[option]) for option in kept)
