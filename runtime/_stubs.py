"""The seam between generated modules and the runtime.

A generated `*_jobs.py` module imports only this module: each generated
function is one call into it. Retries, timeouts and placement live
below, in the engine (`lucidity.engine.get_engine()`), and fanout in
`lucidity.fanout`; never in generated code. This module may not import an
engine's own modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from lucidity._options import JobOptions, validate_options
from lucidity.handle import Job

if TYPE_CHECKING:
    from lucidity.engine import Engine

__all__ = [
    "Default",
    "JobRef",
    "default",
    "fanout",
    "fanout_each",
    "run_local",
    "run_remote",
    "submit_local",
    "submit_remote",
]

T = TypeVar("T")

_get_engine: Callable[[], Engine] | None = None


def _no_output() -> None:
    pass


# `lucidity.printer.settle` once an engine is loaded: a blocking call's
# printed lines are written before its caller goes on.
_settle: Callable[[], None] = _no_output


def _engine() -> Engine:
    # Imported on first use, not with the stubs: a generated module stays
    # cheap to import; and once, not on every call (a hot path).
    global _get_engine, _settle
    if _get_engine is None:
        from lucidity.engine import get_engine
        from lucidity.printer import settle

        _get_engine, _settle = get_engine, settle
    return _get_engine()


class Default:
    """A stub's default standing for the job's own, which the stub cannot
    repeat (it is not a literal): an argument left at it is not sent, and the
    job's own default applies where it runs. Its repr is the default's source
    text, so that `help()` and `inspect.signature` show what it is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def default(text: str) -> Any:
    """The sentinel default of a stub parameter whose job default is `text`.

    Typed `Any` so that it fits the parameter's own annotation, which the
    stubs repeat as written."""
    return Default(text)


class JobRef(Generic[T]):
    """A job named by reference (`"pkg.mod:f"`) with its validated options.

    Generated code builds one per job at import time, e.g.
    `_square: JobRef[int] = JobRef("app.geometry:square", {"fanout": "random"})`;
    it never imports the job's own module.
    """

    __slots__ = ("target", "options", "names", "posonly")

    def __init__(
        self,
        target: str,
        options: Mapping[str, object] | None = None,
        names: tuple[str, ...] = (),
        posonly: int = 0,
    ):
        module, sep, name = target.partition(":")
        if not (module and sep and name):
            raise ValueError(f"job target {target!r} is not of the form 'pkg.mod:func'")
        self.target = target
        self.options: JobOptions = validate_options(options or {})
        # The job's named positional parameters (the first `posonly` of them
        # positional-only), for `omit`; only jobs with sentinel defaults.
        self.names = names
        self.posonly = posonly

    def omit(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None
    ) -> tuple[tuple[Any, ...], Mapping[str, Any] | None]:
        """`args` and `kwargs` without the arguments left at a `Default`.

        Positional arguments after the first one left at its default go by
        keyword instead; positional-only ones there can only hold their
        defaults (a caller cannot skip the one before), so they are dropped.
        """
        kept = {k: v for k, v in (kwargs or {}).items() if type(v) is not Default}
        names = self.names
        for i in range(min(len(args), len(names))):
            if type(args[i]) is Default:
                break
        else:
            return args, kept or None
        moved = {
            names[j]: args[j]
            for j in range(max(i + 1, self.posonly), min(len(args), len(names)))
            if type(args[j]) is not Default
        }
        return args[:i], {**moved, **kept} or None

    def __repr__(self) -> str:
        return f"JobRef({self.target!r})"


def submit_local(
    ref: JobRef[T], args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None
) -> Job[T]:
    """Start `ref(*args, **kwargs)` on this process's own node; return its handle."""
    return _engine().submit(ref.target, ref.options, args, kwargs or None, local=True)


def submit_remote(
    ref: JobRef[T], args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None
) -> Job[T]:
    """Start `ref(*args, **kwargs)` on a random live node; return its handle."""
    return _engine().submit(ref.target, ref.options, args, kwargs or None)


def run_local(
    ref: JobRef[T], args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None
) -> T:
    """Run `ref(*args, **kwargs)` on this process's own node and wait for it."""
    try:
        value: T = _engine().run(
            ref.target, ref.options, args, kwargs or None, local=True
        )
    finally:
        _settle()
    return value


def run_remote(
    ref: JobRef[T], args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None
) -> T:
    """Run `ref(*args, **kwargs)` on a random live node and wait for it."""
    try:
        value: T = _engine().run(ref.target, ref.options, args, kwargs or None)
    finally:
        _settle()
    return value


def _shared(kwargs: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not kwargs:
        return None
    return {k: v for k, v in kwargs.items() if type(v) is not Default} or None


def fanout(
    ref: JobRef[T],
    items: Iterable[tuple[Any, ...]],
    kwargs: Mapping[str, Any] | None = None,
) -> list[T]:
    """Run `ref(*item, **kwargs)` for every item over the nodes; results in
    input order. `kwargs` (the job's keyword-only parameters) apply to all."""
    from lucidity.fanout import fanout as drive

    return drive(_engine(), ref.target, ref.options, items, kwargs=_shared(kwargs))


def fanout_each(
    ref: JobRef[T], items: Iterable[Any], kwargs: Mapping[str, Any] | None = None
) -> list[T]:
    """Run `ref(item, **kwargs)` for every item (a one-parameter job) over the
    nodes; results in input order. Items travel as they are, not wrapped in
    tuples."""
    from lucidity.fanout import fanout as drive

    return drive(
        _engine(), ref.target, ref.options, items, single=True, kwargs=_shared(kwargs)
    )
