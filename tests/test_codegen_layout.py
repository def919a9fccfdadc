"""The renderer's own layout is black's, byte for byte.

`render(module)` lays the statements out itself and leaves to black only what
`layout` cannot vouch for; `render(module, prove=False)` has black format the
whole module, as the generator did before. Over generated signatures (short
and long names, every parameter kind, annotations and defaults black would
rewrite, options, sentinels) the two must agree.
"""

from __future__ import annotations

import black
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucidity.codegen import layout
from lucidity.codegen.layout import canonical
from lucidity.codegen.model import GeneratedModule, JobSpec, Param, ParamKind
from lucidity.codegen.render import BLACK_MODE, render

_ANNOTATIONS = [
    None,
    "int",
    "str",
    "float | None",
    "list[int]",
    "dict[str, list[tuple[int, ...]]]",
    "Callable[..., int]",
    "'Decimal'",
    '"Decimal"',
    "Optional[ int ]",
    "Dict[str,int]",
    "Tuple[int,]",
    "tuple[int]",
    "Literal['a', \"b\"]",
    "Literal['it''s']",
    'Literal["it\'s"]',
    "typing.Mapping[str, collections.abc.Sequence[bytes]]",
    "(int)",
    "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.aa.bb.cc.dd.ee.ff.gg.hh",
    "Annotated[int, Field(default = 1)]",
    "Annotated[int, Field(default=1)]",
]
_LITERALS = [
    "1",
    "-1",
    "1.5e-3",
    "0XFF",
    "None",
    "True",
    "'x'",
    '"y"',
    "()",
    "(1, 2)",
    "(1,)",
    "(1)",
    "('a', \"b\")",
    "'a very long string literal default that goes on and on and on and on'",
]
_SENTINELS = ["os.sep", "_MISSING", "[]", "{'a': 1}", "f(x=1)", "lambda: 0"]
_OPTIONS = [(), (("fanout", '"random"'),), (("retries", "3"), ("timeout", "2.5"))]


def _identifier(draw: st.DrawFn, low: int = 1, high: int = 30) -> str:
    size = draw(st.integers(low, high))
    return "p" + draw(st.text("abcdefghij_", min_size=size - 1, max_size=size - 1))


@st.composite
def _job(draw: st.DrawFn, index: int) -> JobSpec:
    kinds = sorted(
        draw(st.lists(st.sampled_from(list(ParamKind)), max_size=7)),
        key=list(ParamKind).index,
    )
    # At most one *args and one **kwargs.
    kinds = [
        k
        for i, k in enumerate(kinds)
        if k not in (ParamKind.VAR_POSITIONAL, ParamKind.VAR_KEYWORD)
        or kinds.index(k) == i
    ]
    params: list[Param] = []
    names: set[str] = set()
    defaulted = False
    for kind in kinds:
        name = _identifier(draw)
        while name in names:
            name += "x"
        names.add(name)
        default = None
        literal = True
        star = kind in (ParamKind.VAR_POSITIONAL, ParamKind.VAR_KEYWORD)
        positional = kind in (
            ParamKind.POSITIONAL_ONLY,
            ParamKind.POSITIONAL_OR_KEYWORD,
        )
        if not star and (defaulted and positional or draw(st.booleans())):
            literal = draw(st.booleans())
            default = draw(st.sampled_from(_LITERALS if literal else _SENTINELS))
            defaulted = defaulted or positional
        annotation = draw(st.sampled_from(_ANNOTATIONS))
        params.append(Param(name, annotation, default, kind, literal))
    name = f"job{index}_" + _identifier(draw, 1, 40)
    return JobSpec(
        name=name,
        module="pkg.some_module",
        params=tuple(params),
        returns_annotation=draw(st.sampled_from(_ANNOTATIONS)),
        options=draw(st.sampled_from(_OPTIONS)),
        ref_name=f"_{name}",
        runtime_alias="_lucidity",
        is_async=draw(st.booleans()),
    )


@st.composite
def _modules(draw: st.DrawFn) -> GeneratedModule:
    count = draw(st.integers(1, 3))
    imports = draw(
        st.sampled_from(
            [
                (),
                ("from decimal import Decimal",),
                (
                    "from some.very.long.package.name.of.the.types import "
                    "FirstType, SecondType, ThirdType",
                ),
            ]
        )
    )
    return GeneratedModule(
        module="pkg.some_module",
        source_path="pkg/some_module.py",
        source_hash="0" * 64,
        regenerate_command="lucidity-gen pkg/some_module.py",
        runtime_alias="_lucidity",
        jobs=tuple(draw(_job(i)) for i in range(count)),
        type_imports=imports,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_modules())
def test_layout_is_blacks_byte_for_byte(module: GeneratedModule) -> None:
    laid = render(module)
    assert laid == render(module, prove=False)
    assert black.format_str(laid, mode=BLACK_MODE) == laid


@pytest.mark.parametrize(
    ("text", "param", "expected"),
    [
        ("a: int", True, "a: int"),
        ("x: 'A' = 'b'", True, 'x: "A" = "b"'),
        ("x: Literal['it\"s']", True, "x: Literal['it\"s']"),
        ("(a,)", False, "(a,)"),
        ('{"k": k, **rest}', False, '{"k": k, **rest}'),
        ('names=("a", "b")', False, 'names=("a", "b")'),
        ("x: Tuple[int,]", True, None),  # a magic trailing comma
        ("x: int = (1)", True, None),  # redundant parentheses
        ("x: int=1", True, None),  # black spaces it
        ("Dict[str,int]", False, None),
        ("a[1:2]", False, None),
        ("0XFF", False, None),
        ("b'x'", False, None),
        ("'a' 'b'", False, None),
        ("'a\\n'", False, None),
        ("not x", False, None),
        ("Tëst", False, None),  # width is not len() for black
    ],
)
def test_canonical_accepts_only_what_black_leaves(
    text: str, param: bool, expected: str | None
) -> None:
    assert canonical(text, param=param) == expected
    if expected is not None:
        source = f"def f({expected}):\n    pass\n" if param else f"f({expected})\n"
        assert black.format_str(source, mode=BLACK_MODE) == source


def test_finish_formats_only_the_marked_statements() -> None:
    seen: list[str] = []

    def fake_black(source: str) -> str:
        seen.append(source)
        return black.format_str(source, mode=BLACK_MODE)

    text = (
        f"x = 1\n\n{layout.CUT}y = 2\n\n\n{layout.CUT}{layout.MARK}z  =  [1,2]\n"
        f"{layout.CUT}w = 3\n"
    )
    assert layout.finish(text, fake_black) == "x = 1\n\ny = 2\n\n\nz = [1, 2]\nw = 3\n"
    assert seen == ["z  =  [1,2]\n"]
