"""Black's layout of the generated statements, decided without running black.

Black costs more than the rest of a fresh run put together, yet the templates
leave it one decision: where a long `def` signature, stub call or `JobRef`
line splits. `Layout` makes that decision as black does (one line if it
fits; else the brackets' contents on one indented line; else one element a
line with a magic trailing comma), on parts it has checked to be
black-canonical already (`canonical`: a small grammar of names, plain
strings, decimal numbers, brackets and black's spacing). A statement with
anything it cannot vouch for is marked, and `finish` has black format just
the marked statements, all of one module in one call. The tests hold the
result to black's, byte for byte, against `Layout(prove=False)`, which marks
everything (black formats the whole module, as before).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["CUT", "LINE_LENGTH", "Layout", "canonical", "finish", "plain"]

LINE_LENGTH = 88
INDENT = "    "
# The templates put CUT before each statement a Layout lays out; a statement
# holding MARK goes to black. Neither can occur in Python source text.
CUT = "\x01"
MARK = "\x00"
# Black's output of the marked statements is cut apart at this comment.
_SEPARATOR = "# lucidity-layout-cut"

_TOKEN = re.compile(
    r"""
    (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+(?:_[0-9]+)*(?:\.[0-9]+(?:_[0-9]+)*)?(?:e[-+]?[0-9]+)?)
  | (?P<string>"[^"\\\n]*"|'[^'\\\n]*')
  | (?P<op>\ \|\ |\ =\ |,\ |:\ |\.\.\.|\*\*|[.,:=*|\-()\[\]{}])
    """,
    re.VERBOSE,
)
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = frozenset(_OPEN.values())
_ATOM = frozenset({"name", "number", "string"})
# What may come right before a unary `*`, `**` or `-`, or an opening bracket
# that is not a call's or a subscript's.
_PREFIX_AFTER = frozenset({None, "(", "[", "{", ", ", " = ", ": ", "=", " | "})
_KEYWORDS = frozenset(
    "and as assert async await break class continue def del elif else except "
    "for from global if import in is lambda nonlocal not or pass raise return "
    "try while with yield".split()
)


class _Bracket:
    """An open bracket: which, whether a call's or a subscript's, and the
    commas seen at its level."""

    __slots__ = ("commas", "opener", "subscript")

    def __init__(self, opener: str, subscript: bool) -> None:
        self.opener = opener
        self.subscript = subscript
        self.commas = 0


def canonical(text: str, param: bool = False) -> str | None:
    """`text` (one parameter, argument or annotation) as black writes it, or
    None when that is not certain here.

    Black would leave the accepted texts as they are but for the quotes of a
    plain string (`'a'` becomes `"a"`), so they are returned with those
    normalised. `param`: `text` is a declaration (`a: int = 1`), whose `=`
    at the top level is spaced, as black spaces it after an annotation.
    """
    if text in ("*", "/"):
        return text
    if not text.isascii():
        return None
    out: list[str] = []
    stack: list[_Bracket] = []  # the brackets open at this point
    prev: str | None = None  # the previous token (its text; an atom's kind)
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            return None
        kind = match.lastgroup
        token = match.group()
        pos = match.end()
        if kind in _ATOM:
            if prev in _ATOM or prev in _CLOSE:
                return None
            if kind == "name" and token in _KEYWORDS:
                return None
            if kind == "string" and token[0] == "'" and '"' not in token:
                token = f'"{token[1:-1]}"'
            out.append(token)
            prev = kind
            continue
        depth_top = not stack
        if token in _OPEN:
            subscript = prev in _ATOM or prev in _CLOSE
            if subscript and prev in ("number", "string"):
                return None
            if not subscript and prev not in _PREFIX_AFTER:
                return None
            if token == "(" and prev is not None and prev in _CLOSE:
                return None  # a call of a call: fine for black, not ours
            stack.append(_Bracket(token, subscript))
        elif token in _CLOSE:
            if not stack or _OPEN[stack[-1].opener] != token:
                return None
            bracket = stack.pop()
            tuple_like = bracket.opener == "(" and not bracket.subscript
            if prev == ",":
                # Only a one-tuple's comma is not magic.
                if not tuple_like or bracket.commas != 1:
                    return None
            elif tuple_like and prev != "(" and bracket.commas == 0:
                return None  # redundant parentheses: black may drop them
        elif token in (",", ", "):
            if stack:
                stack[-1].commas += 1
            if prev is None or prev in ("(", "[", "{", ",", ", "):
                return None
            if token == "," and text[pos : pos + 1] not in _CLOSE:
                return None
            if token == ", " and text[pos : pos + 1] in _CLOSE:
                return None
        elif token == ": ":
            # A parameter's annotation, or a dict display's value.
            if not (depth_top and param) and not (stack and stack[-1].opener == "{"):
                return None
        elif token == " = ":
            if not (depth_top and param):
                return None
        elif token == "=":
            if depth_top and param or prev != "name":
                return None
        elif token in ("*", "**", "-"):
            if prev not in _PREFIX_AFTER:
                return None
            nxt = _TOKEN.match(text, pos)
            if nxt is None or nxt.lastgroup not in (
                ("number",) if token == "-" else ("name", "op")
            ):
                return None
            if token != "-" and nxt.lastgroup == "op" and nxt.group() not in _OPEN:
                return None
        elif token == ".":
            if prev not in ("name",) and prev not in _CLOSE:
                return None
            nxt = _TOKEN.match(text, pos)
            if nxt is None or nxt.lastgroup != "name":
                return None
        elif token == "...":
            if prev not in _PREFIX_AFTER:
                return None
        elif token == " | ":
            if prev is None or prev not in _ATOM and prev not in _CLOSE:
                return None
        else:  # `:` unspaced (a slice), `|` unspaced, `=` misplaced
            return None
        out.append(token)
        prev = token
    if stack or prev is None or prev in (",", ", ", ": ", " = ", "=", " | "):
        return None
    if prev in ("*", "**", "-", "."):
        return None
    return "".join(out)


_STRINGS = re.compile(r"\"[^\"]*\"|'[^']*'")


def _counted_commas(param: str) -> bool:
    """Whether black sees a comma in a lone parameter, so adds none after it.

    Black ignores the commas of an annotation, but does not take the one of
    `*args: T` for an annotation; a default's commas always count.
    """
    bare = _STRINGS.sub('""', param)
    annotation, _, default = bare.partition(" = ")
    if "," in default:
        return True
    return "," in annotation and param.startswith("*") and not param.startswith("**")


def _docstring_ok(text: str) -> bool:
    # Black re-indents and strips a docstring; ours is already so, unless
    # the text brings tabs, escapes, non-ASCII (width) or a closing quote.
    return (
        text.isascii()
        and "\\" not in text
        and not text.endswith('"')
        and all(c.isprintable() for c in text.replace("\n", ""))
    )


class Layout:
    """The helpers the templates lay statements out with (see the module)."""

    def __init__(self, prove: bool = True) -> None:
        self.prove = prove

    cut = CUT

    def define(self, name: str, parts: Sequence[str], returns: str) -> str:
        """`def name(parts) -> returns:`, split as black splits it."""
        raw = f"def {name}({', '.join(parts)}) -> {returns}:"
        if not self.prove:
            return MARK + raw
        params = [canonical(p, param=True) for p in parts]
        ret = canonical(returns)
        if ret is None or ret.startswith("(") or None in params or not name.isascii():
            return MARK + raw
        laid = [p for p in params if p is not None]
        one = f"def {name}({', '.join(laid)}) -> {ret}:"
        if len(one) <= LINE_LENGTH:
            return one
        if not laid:  # black would split the return annotation
            return MARK + raw
        head, tail = f"def {name}(", f") -> {ret}:"
        if len(head) > LINE_LENGTH or len(tail) > LINE_LENGTH:
            return MARK + raw
        body = INDENT + ", ".join(laid)
        alone = len(laid) == 1 and not _counted_commas(laid[0])
        if not alone and len(body) <= LINE_LENGTH:
            return f"{head}\n{body}\n{tail}"
        if len(laid) == 1 and not alone:
            return MARK + raw
        lines = [f"{INDENT}{p}," for p in laid]
        if any(len(line) > LINE_LENGTH for line in lines):
            return MARK + raw
        return "\n".join([head, *lines, tail])

    def call(self, indent: int, lead: str, callee: str, args: Sequence[str]) -> str:
        """`lead callee(args)` (a return, or an assignment's target and `=`),
        at `indent` spaces, split as black splits it; black is asked when the
        part before the bracket is too long itself."""
        raw = f"{lead}{callee}({', '.join(args)})"
        if not self.prove:
            return MARK + raw
        laid = [canonical(a) for a in args]
        if None in laid or canonical(callee) is None or not args:
            return MARK + raw
        if lead.endswith(" = "):
            target = canonical(lead[:-3], param=True)
            if target is None:
                return MARK + raw
            lead = f"{target} = "
        elif lead not in ("", "return "):
            return MARK + raw
        parts = [a for a in laid if a is not None]
        pad = " " * indent
        one = f"{pad}{lead}{callee}({', '.join(parts)})"
        if len(one) <= LINE_LENGTH:
            return one[indent:]
        head = f"{pad}{lead}{callee}("
        if len(head) > LINE_LENGTH:
            return MARK + raw
        inner = pad + INDENT
        body = inner + ", ".join(parts)
        if len(body) <= LINE_LENGTH:
            return f"{head[indent:]}\n{body}\n{pad})"
        if len(parts) == 1 or lead.endswith(" = "):
            # One long argument is split inside itself; an assignment may
            # have black weigh its optional parentheses: not ours to decide.
            return MARK + raw
        lines = [f"{inner}{p}," for p in parts]
        if any(len(line) > LINE_LENGTH for line in lines):
            return MARK + raw
        return "\n".join([head[indent:], *lines, f"{pad})"])

    def doc(self, text: str) -> str:
        """A docstring's text, as black leaves it (or marked)."""
        return text if self.prove and _docstring_ok(text) else MARK + text


def plain(text: str) -> str:
    """`text` with the markers gone and nothing laid out: black's input."""
    return text.replace("\n" + CUT, "\n").replace(MARK, "")


def finish(text: str, format_code: Callable[[str], str]) -> str:
    """`text` with its CUT markers gone and each statement holding a MARK
    formatted by `format_code` (black), all of them in one call."""
    pieces = text.split("\n" + CUT)
    marked = [i for i, piece in enumerate(pieces) if MARK in piece]
    if marked:
        statements = []
        for i in marked:
            piece = pieces[i]
            if i == 0:
                raise ValueError("a marked statement without a CUT before it")
            body = piece.rstrip("\n")
            statements.append(body.replace(MARK, ""))
        source = f"\n{_SEPARATOR}\n".join(statements) + "\n"
        formatted = format_code(source).split(f"\n{_SEPARATOR}\n")
        if len(formatted) != len(marked):
            raise ValueError("black merged the statements laid out for it")
        for i, new in zip(marked, formatted, strict=True):
            piece = pieces[i]
            trailing = piece[len(piece.rstrip("\n")) :]
            pieces[i] = new.strip("\n") + trailing
    return "\n".join(pieces)
