"""Record numbers (JSON floats) as PACT decimal strings, deterministically.

PACT 3.0 writes every fractional number as a decimal string (``"0.084"``, pattern
``^[+-]?\\d+(\\.\\d+)?$``): no exponent, no binary noise. A record's float is read as the
shortest decimal that reads back to the same float (Python's ``repr``), so ``0.1`` is ``0.1`` and
never ``0.1000000000000000055511151231257827``. Arithmetic then runs in :class:`~decimal.Decimal`
with 34 significant digits, and a result is written rounded half-to-even to
:data:`SIGNIFICANT_DIGITS` significant digits, in fixed-point notation, trailing zeros removed.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

# Nine significant digits: far below any meter's accuracy (0.5 % class meters, a few digits), so
# rounding never hides a measured difference, and short enough to read. The relative rounding
# error of a written value is at most 5e-9.
SIGNIFICANT_DIGITS = 9
# Data-quality ratings and shares written with two decimals ("1.25", "87.5").
RATING_PLACES = 2

_WORKING_PRECISION = 34

__all__ = [
    "RATING_PLACES",
    "SIGNIFICANT_DIGITS",
    "decimal_places_string",
    "decimal_string",
    "divide",
    "exact_decimal",
    "percent_string",
    "round_significant",
]


def exact_decimal(value: float | int | Decimal | str) -> Decimal:
    """A number as the decimal its JSON text stood for (a float through ``repr``)."""
    if isinstance(value, bool):  # a JSON true is not a number
        raise TypeError(f"{value!r} is not a number")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        result = Decimal(repr(value))
    else:
        result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return result


def divide(numerator: Decimal, denominator: Decimal) -> Decimal:
    """``numerator / denominator`` with 34 significant digits (then rounded when written)."""
    with localcontext() as context:
        context.prec = _WORKING_PRECISION
        return numerator / denominator


def round_significant(value: Decimal, digits: int = SIGNIFICANT_DIGITS) -> Decimal:
    """``value`` rounded half-to-even to ``digits`` significant digits."""
    if value.is_zero():
        return Decimal(0)
    quantum = Decimal(1).scaleb(value.adjusted() - digits + 1)
    with localcontext() as context:
        context.prec = max(_WORKING_PRECISION, value.adjusted() + 2)
        return value.quantize(quantum, rounding=ROUND_HALF_EVEN)


def _fixed_point(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def decimal_string(value: float | int | Decimal, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``1.68 / 20`` -> ``"0.084"``: rounded to ``digits`` significant digits, no exponent."""
    return _fixed_point(round_significant(exact_decimal(value), digits))


def decimal_places_string(value: float | int | Decimal, places: int = RATING_PLACES) -> str:
    """``1.3333`` -> ``"1.33"``: rounded half-to-even to ``places`` decimals, no trailing zeros."""
    quantum = Decimal(1).scaleb(-places)
    with localcontext() as context:
        context.prec = _WORKING_PRECISION
        return _fixed_point(exact_decimal(value).quantize(quantum, rounding=ROUND_HALF_EVEN))


def percent_string(share: float | Decimal) -> str:
    """A record's 0..1 share as PACT's percent: ``0.125`` -> ``"12.5"``."""
    return decimal_string(exact_decimal(share) * 100)
