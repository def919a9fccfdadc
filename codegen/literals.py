"""Literals in the source: which defaults the stubs can repeat, and the
values of `@job` options (evaluated without running any code)."""

from __future__ import annotations

import libcst as cst

__all__ = ["NotLiteral", "evaluate", "non_literal"]


class NotLiteral(Exception):
    """An option value `lucidity-gen` cannot evaluate without running code."""


def non_literal(expr: cst.BaseExpression) -> cst.CSTNode | None:
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
            offender = non_literal(element.value)
            if offender is not None:
                return offender
        return None
    return expr


def evaluate(expr: cst.BaseExpression) -> object:
    """The value of an option: a literal, or + - * // ** over number literals."""
    if isinstance(expr, (cst.Integer, cst.Float)):
        return expr.evaluated_value
    if isinstance(expr, (cst.SimpleString, cst.ConcatenatedString)):
        value = expr.evaluated_value
        if value is None:
            raise NotLiteral
        return value
    if isinstance(expr, cst.Name) and expr.value in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[expr.value]
    if isinstance(expr, cst.UnaryOperation):
        operand = _number(evaluate(expr.expression))
        if isinstance(expr.operator, cst.Minus):
            return -operand
        if isinstance(expr.operator, cst.Plus):
            return +operand
        raise NotLiteral
    if isinstance(expr, cst.BinaryOperation):
        left = _number(evaluate(expr.left))
        right = _number(evaluate(expr.right))
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
    raise NotLiteral


def _number(value: object) -> int | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise NotLiteral
