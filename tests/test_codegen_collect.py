"""The collector: which functions are jobs, and the errors for what cannot be."""

from __future__ import annotations

import re
import textwrap

import pytest

from lucidity.codegen.collect import Collected, collect
from lucidity.codegen.model import ParamKind

PATH = "app/geometry.py"


def _collect(source: str) -> Collected:
    return collect(
        textwrap.dedent(source).lstrip("\n").encode(),
        PATH,
        "app.geometry",
        "app/geometry.py",
        "lucidity-gen app/geometry.py",
    )


def jobs(source: str) -> list[str]:
    result = _collect(source)
    assert result.errors == (), [str(e) for e in result.errors]
    return [] if result.module is None else [j.name for j in result.module.jobs]


def errors(source: str) -> list[str]:
    result = _collect(source)
    assert result.module is None
    return [str(e) for e in result.errors]


# ---------------------------------------------------------------- marker spellings


@pytest.mark.parametrize(
    "source",
    [
        "from lucidity import job\n@job\ndef f(a: int) -> int: ...\n",
        "from lucidity import job\n@job()\ndef f(a: int) -> int: ...\n",
        "from lucidity import job\n@job(fanout='random')\ndef f(a: int) -> int: ...\n",
        "from lucidity import job as task\n@task\ndef f(a: int) -> int: ...\n",
        "from lucidity import job as task\n@task(retries=1)\ndef f(a: int) -> int: ...\n",
        "import lucidity\n@lucidity.job\ndef f(a: int) -> int: ...\n",
        "import lucidity\n@lucidity.job(memory=None)\ndef f(a: int) -> int: ...\n",
        "import lucidity as lu\n@lu.job\ndef f(a: int) -> int: ...\n",
        "import lucidity as lu\n@lu.job(fuel=3)\ndef f(a: int) -> int: ...\n",
        # Another decorator around it does not hide the mark.
        "import functools\nfrom lucidity import job\n@job\n@functools.cache\n"
        "def f(a: int) -> int: ...\n",
        # Defined under a module-level `if`: still importable by reference.
        "import sys\nfrom lucidity import job\nif sys.platform:\n    @job\n"
        "    def f(a: int) -> int: ...\n",
    ],
)
def test_every_spelling_of_the_marker_is_a_job(source: str) -> None:
    assert jobs(source) == ["f"]


@pytest.mark.parametrize(
    "source",
    [
        "from celery import job\n@job\ndef f(a: int) -> int: ...\n",
        "from celery import job\nimport lucidity\n@job(fanout='random')\n"
        "def f(a: int) -> int: ...\n",
        "import lucidity\ndef job(f): return f\n@job\ndef f(a: int) -> int: ...\n",
        "import lucidity\nfrom mylib import lucidity as other\n@other.job\n"
        "def f(a: int) -> int: ...\n",
        "import lucidity\n@lucidity.jobs\ndef f(a: int) -> int: ...\n",
        # Mentioning lucidity is not enough.
        "# lucidity\n@job\ndef f(a: int) -> int: ...\n",
    ],
)
def test_a_foreign_job_is_not_a_job(source: str) -> None:
    assert jobs(source) == []


def test_a_local_job_shadowing_the_import_is_not_a_job() -> None:
    source = """
        from lucidity import job

        def job(f):
            return f

        @job
        def f(a: int) -> int: ...
    """
    assert jobs(source) == []


def test_jobs_are_kept_in_source_order_with_their_ir() -> None:
    result = _collect("""
        from lucidity import job

        @job(memory=200 * 1024 * 1024, fanout="random", retries=0)
        def second(a: int, /, b: str = "x") -> float: ...

        @job
        def first() -> None: ...
        """)
    assert result.module is not None
    second, first = result.module.jobs
    assert (second.name, first.name) == ("second", "first")
    assert second.target == "app.geometry:second"
    # Non-default options only, in OPTION_NAMES order, as written.
    assert second.options == (("memory", "200 * 1024 * 1024"), ("fanout", '"random"'))
    assert [p.kind for p in second.params] == [
        ParamKind.POSITIONAL_ONLY,
        ParamKind.POSITIONAL_OR_KEYWORD,
    ]
    assert second.signature == 'a: int, /, b: str = "x"'
    assert first.params == () and first.options == ()


# ------------------------------------------------------------------ refused shapes


def test_async_def_is_a_job() -> None:
    result = _collect("""
        from lucidity import job

        @job
        async def fetch(url: str, *, timeout: float = 1.0) -> bytes: ...
        """)
    assert result.module is not None
    (fetch,) = result.module.jobs
    assert fetch.is_async
    # The stubs return what the coroutine returns.
    assert fetch.returns == "bytes"


def test_async_generator() -> None:
    assert (
        errors("""
        from lucidity import job

        @job
        async def ticks(n: int) -> int:
            yield n
        """)
        == [
            "app/geometry.py:5:5: @job function 'ticks' is a generator; jobs must "
            "return their result: return a list instead of yielding"
        ]
    )


def test_generator() -> None:
    assert (
        errors("""
        from lucidity import job

        @job
        def numbers(n: int) -> int:
            def inner():
                yield 1  # a nested generator is fine
            squares = (i * i for i in range(n))
            f = lambda: (yield)
            yield from squares
        """)
        == [
            "app/geometry.py:9:5: @job function 'numbers' is a generator; jobs must "
            "return their result: return a list instead of yielding"
        ]
    )


def test_a_yield_only_in_nested_scopes_is_not_a_generator() -> None:
    source = """
        from lucidity import job

        @job
        def f(n: int) -> list[int]:
            def inner():
                yield n
            class C:
                def g(self):
                    yield 2
            return list(inner())
    """
    assert jobs(source) == ["f"]


def test_method() -> None:
    assert (
        errors("""
        from lucidity import job

        class Shapes:
            @job
            def area(self, w: float) -> float: ...
        """)
        == [
            "app/geometry.py:5:5: @job function 'area' is a method; only module-level "
            "functions can be jobs (they are run by reference): move it out of the class"
        ]
    )


def test_nested_function() -> None:
    assert (
        errors("""
        from lucidity import job

        def outer() -> None:
            @job
            def inner(a: int) -> int: ...
        """)
        == [
            "app/geometry.py:5:5: @job function 'inner' is nested inside a function; "
            "only module-level functions can be jobs (they are run by reference): move "
            "it to the module level"
        ]
    )


def test_a_job_may_define_functions_inside() -> None:
    source = """
        from lucidity import job

        @job
        def outer(a: int) -> int:
            def helper(x: int) -> int:
                return x
            return helper(a)
    """
    assert jobs(source) == ["outer"]


def test_class() -> None:
    assert (
        errors("""
        from lucidity import job

        @job
        class Task: ...
        """)
        == [
            "app/geometry.py:3:1: @job applied to class 'Task'; only module-level def "
            "functions can be jobs"
        ]
    )


@pytest.mark.parametrize(
    "line",
    [
        "square = job(lambda a: a * a)",
        "square = job(fanout='random')(lambda a: a * a)",
    ],
)
def test_lambda(line: str) -> None:
    col = line.index("lambda") + 1
    assert errors(f"import lucidity\nfrom lucidity import job\n{line}\n") == [
        f"app/geometry.py:3:{col}: @job applied to a lambda; jobs are run by "
        "reference ('pkg.mod:f'): define a module-level def and decorate it with @job"
    ]


def test_a_foreign_job_may_take_a_lambda() -> None:
    assert jobs("import lucidity\nfrom celery import job\nf = job(lambda a: a)\n") == []


def test_job_called_directly_on_a_function() -> None:
    assert (
        errors("""
        from lucidity import job

        def square(a: int) -> int: ...

        square_job = job(square)
        """)
        == [
            "app/geometry.py:5:14: job(...) called directly; lucidity-gen only sees @job "
            "used as a decorator: put @job above a module-level def"
        ]
    )


def test_every_parameter_kind_is_kept_in_order() -> None:
    result = _collect("""
        from lucidity import job

        @job
        def f(a: int, /, b: str, *rest: int, scale: float = 1.0, **extra: str) -> int:
            ...
        """)
    assert result.module is not None
    (f,) = result.module.jobs
    assert [(p.name, p.kind) for p in f.params] == [
        ("a", ParamKind.POSITIONAL_ONLY),
        ("b", ParamKind.POSITIONAL_OR_KEYWORD),
        ("rest", ParamKind.VAR_POSITIONAL),
        ("scale", ParamKind.KEYWORD_ONLY),
        ("extra", ParamKind.VAR_KEYWORD),
    ]
    assert f.signature == (
        "a: int, /, b: str, *rest: int, scale: float = 1.0, **extra: str"
    )


def test_a_bare_star_is_repeated() -> None:
    result = _collect("""
        from lucidity import job

        @job
        def f(a: int, *, k: int, m: int = 2) -> int: ...
        """)
    assert result.module is not None
    assert result.module.jobs[0].signature == "a: int, *, k: int, m: int = 2"


@pytest.mark.parametrize(
    "default",
    ["[]", "{}", "SIZE", "f(1)", "1 + 2", "f'{x}'", "(1, [2])", "-x", "os.F_OK"],
)
def test_a_non_literal_default_becomes_a_sentinel(default: str) -> None:
    result = _collect(
        f"from lucidity import job\n@job\ndef square(a: int = {default}) -> int: ...\n"
    )
    assert result.module is not None
    (param,) = result.module.jobs[0].params
    assert (param.default, param.literal, param.sentinel) == (default, False, True)
    assert param.declaration("_lucidity") == (
        f"a: int = _lucidity.default({default!r})"
    )


@pytest.mark.parametrize(
    "default",
    [
        "1",
        "-1",
        "+2.5",
        "1j",
        "'s'",
        "b'b'",
        "'a' 'b'",
        "None",
        "True",
        "(1, 'x')",
        "()",
    ],
)
def test_literal_defaults_are_kept(default: str) -> None:
    result = _collect(
        f"from lucidity import job\n@job\ndef f(a: int = {default}): ...\n"
    )
    assert result.module is not None
    assert result.module.jobs[0].params[0].default == default


def test_unknown_option() -> None:
    assert (
        errors("""
        from lucidity import job

        @job(fanout="random", colour="blue")
        def square(a: int) -> int: ...
        """)
        == [
            "app/geometry.py:3:23: unknown @job option 'colour'; allowed options: "
            "init_retry_interval_ms, sync_retry_interval_ms, async_init_retry_interval_ms, "
            "async_get_retry_interval_ms, async_set_retry_interval_ms, "
            "shutdown_retry_interval_ms, memory, fuel, fanout, timeout, retries"
        ]
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "fanout='sideways'",
            "@job option fanout='sideways' is not allowed; fanout must be "
            "'roundrobin' or 'random'",
        ),
        (
            "memory=1024 * 1024",
            "@job option memory=1048576 is not allowed; memory must be an int of "
            "bytes, at least 33554432 (32 MiB), or None",
        ),
        (
            "retries=-1",
            "@job option retries=-1 is not allowed; retries must be an int >= 0 "
            "(times an application exception is retried)",
        ),
    ],
)
def test_bad_option_value(option: str, message: str) -> None:
    source = (
        f"from lucidity import job\n@job({option})\ndef square(a: int) -> int: ...\n"
    )
    col = source.splitlines()[1].index("=") + 2
    assert errors(source) == [f"app/geometry.py:2:{col}: {message}"]


@pytest.mark.parametrize(
    "value", ["MEMORY", "int('3')", "2 ** x", "[1]", "f'x'", "1 / 2"]
)
def test_non_literal_option_value(value: str) -> None:
    source = (
        f"from lucidity import job\n@job(memory={value})\ndef f(a: int) -> int: ...\n"
    )
    assert errors(source) == [
        f"app/geometry.py:2:13: @job option memory={value} is not a literal; options "
        "must be literals (numbers, strings, None, or + - * // ** on numbers) so "
        "lucidity-gen can check them"
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "@job(3)",
            '2:6: @job takes options as keywords only, e.g. @job(fanout="random")',
        ),
        (
            "@job(**OPTS)",
            "2:6: @job options cannot be unpacked with ** here; write each "
            "option as name=literal so lucidity-gen can check it",
        ),
        ("@job(retries=1, retries=2)", "2:17: @job option 'retries' is given twice"),
    ],
)
def test_malformed_options(source: str, message: str) -> None:
    text = f"from lucidity import job\n{source}\ndef f(a: int) -> int: ...\n"
    assert errors(text) == [f"app/geometry.py:{message}"]


def test_every_error_of_a_file_is_reported() -> None:
    assert [e.split(": ")[0] for e in errors("""
            from lucidity import job

            @job(colour=1)
            def f(*args: int) -> int:
                yield 1
            """)] == ["app/geometry.py:5:5", "app/geometry.py:3:6"]


def test_a_job_replaced_by_a_later_star_import() -> None:
    # What a C accelerator does (heapq, bisect): the module attribute the
    # workers would run is not the marked function.
    assert (
        errors("""
        from lucidity import job

        @job
        def heappush(heap: list[int], item: int) -> None: ...

        try:
            from _heapq import *
        except ImportError:
            pass
        """)
        == [
            "app/geometry.py:7:5: @job function 'heappush' is replaced after its def "
            "by 'from _heapq import *', which may replace it (as a C accelerator "
            "module does): workers run the module attribute, which is then not this "
            "function; mark the function that stays (or move the def after this "
            "statement)"
        ]
    )


@pytest.mark.parametrize(
    ("later", "col"),
    [
        ("from _bisect import bisect", 1),
        ("bisect = other", 1),
        ("def bisect(a): ...", 1),
    ],
)
def test_a_job_replaced_by_a_later_binding(later: str, col: int) -> None:
    source = (
        "from lucidity import job\n@job\ndef bisect(a: int) -> int: ...\n"
        f"other = 1\n{later}\n"
    )
    (error,) = errors(source)
    assert error.startswith(
        f"app/geometry.py:5:{col}: @job function 'bisect' is replaced after its def"
    )


def test_a_star_import_before_the_jobs_is_fine() -> None:
    source = (
        "from os.path import *\nfrom lucidity import job\n@job\ndef f() -> int: ...\n"
    )
    assert jobs(source) == ["f"]


def test_a_job_defined_in_both_branches_of_an_if_is_one_job() -> None:
    source = """
        import sys
        from lucidity import job

        if sys.platform == "win32":
            @job
            def sep() -> str: return "\\\\"
        else:
            @job
            def sep() -> str: return "/"
    """
    assert jobs(source) == ["sep"]


@pytest.mark.parametrize(
    "decorator", ["contextlib.contextmanager", "property", "staticmethod", "overload"]
)
def test_a_decorator_that_changes_what_the_attribute_is(decorator: str) -> None:
    source = f"from lucidity import job\n@job\n@{decorator}\ndef f() -> int: ...\n"
    (error,) = errors(source)
    last = decorator.rsplit(".", 1)[-1]
    assert error.startswith(
        f"app/geometry.py:3:1: @job function 'f' is also decorated @{last}"
    )


def test_a_rebinding_of_job_above_the_def_counts_below_it_does_not() -> None:
    source = """
        from lucidity import job

        @job
        def first() -> int: ...

        job = print

        @job
        def second() -> int: ...
    """
    assert jobs(source) == ["first"]


def test_a_local_rebinding_of_job_hides_it_in_that_function_only() -> None:
    source = """
        from lucidity import job

        def outer(job: object) -> None:
            @job
            def inner() -> None: ...

        @job
        def f() -> int: ...
    """
    assert jobs(source) == ["f"]


def test_syntax_error_points_at_the_error() -> None:
    # CPython's message and column vary a little between versions; the line not.
    (error,) = errors("from lucidity import job\n\n@job\ndef f(a int) -> int: ...\n")
    assert re.fullmatch(
        r"app/geometry\.py:4:\d+: cannot parse: .+; fix the syntax error and run again",
        error,
    )


def test_annotation_clashing_with_a_generated_name() -> None:
    assert (
        errors("""
        from lucidity import job
        from mylib import Job

        @job
        def f(a: Job) -> int: ...
        """)
        == [
            "app/geometry.py:5:10: @job function 'f': annotation name 'Job' clashes with "
            "a name the generated module defines; import it under another name"
        ]
    )


def test_type_imports_follow_the_source() -> None:
    result = _collect("""
        from __future__ import annotations
        import numpy as np
        import os.path
        from typing import TYPE_CHECKING, Any, Literal
        from lucidity import job
        if TYPE_CHECKING:
            from .models import Shape as S

        Alias = int

        @job
        def f(a: np.ndarray, b: "S", c: Literal["fast"], d: Alias, e: Any) -> list[Point]:
            ...

        class Point: ...
        """)
    assert result.module is not None
    assert result.module.type_imports == (
        "import numpy as np",
        "from typing import Literal",
        "from .models import Shape as S",
        "from app.geometry import Alias, Point",
    )
    assert result.module.typing_names == "TYPE_CHECKING, Any"


@pytest.mark.parametrize(
    "source", [b"import lucidity\nx = '\xff'\n", b"# coding: nope\nimport lucidity\n"]
)
def test_undecodable_source(source: bytes) -> None:
    result = collect(source, PATH, "app.geometry", "app/geometry.py", "")
    assert result.module is None
    (error,) = result.errors
    assert str(error).startswith("app/geometry.py:1:1: cannot decode: ")


def test_a_yield_after_wide_characters_is_placed_by_characters() -> None:
    source = 'from lucidity import job\n@job\ndef f() -> str:\n    s = "ééé"; yield s\n'
    (error,) = errors(source)
    assert error.startswith("app/geometry.py:4:16: @job function 'f' is a generator")


def test_an_async_def_with_an_await_and_a_nested_generator_is_not_one() -> None:
    source = """
        from lucidity import job

        @job
        async def f(n: int) -> list[int]:
            async def gen():
                yield n
            return [x async for x in gen()]
    """
    assert jobs(source) == ["f"]
