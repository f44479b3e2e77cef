"""Emission factors over time (pure): which factor applies to which part of an order.

A factor is constant or a table of validity intervals (an hourly grid intensity, a contract that
changes on the first of the month). An order that spans a change is cut at the change: each part
of its activity is multiplied by the factor valid then. The parts' activities add up to the
order's activity exactly (they are rescaled to it), so CO2e changes with the factors but energy
never does.

A time not covered by any row of a table takes the nearest row and the record says so
(``factor_extrapolated``): a missing hour in a grid table must not silently zero an order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

from edge_agent.attribution.model import Factor, FactorUse, Flag, Interval
from edge_agent.domain import iso_from_ns

__all__ = ["FactorPiece", "cut_points", "factor_at", "split_by_factors"]

FactorPiece = tuple[Interval, float, float, float]
"""A part of an order's window: (interval, activity, measured activity, uncertainty)."""


def cut_points(schedules: Sequence[Sequence[Factor]], window: Interval) -> list[int]:
    """Instants strictly inside ``window`` where some schedule's factor changes."""
    points: set[int] = set()
    for schedule in schedules:
        for factor in schedule:
            for edge in (factor.valid_from_ns, factor.valid_to_ns):
                if edge is not None and window.start_ns < edge < window.end_ns:
                    points.add(edge)
    return sorted(points)


def factor_at(schedule: Sequence[Factor], t_ns: int) -> tuple[Factor, bool]:
    """The row valid at ``t_ns``; else the nearest row and True (extrapolated).

    ``schedule`` is sorted by ``valid_from_ns`` (None first) and its rows do not overlap.
    """
    if not schedule:
        raise ValueError("an empty factor schedule")
    starts = [f.valid_from_ns if f.valid_from_ns is not None else -math.inf for f in schedule]
    index = bisect.bisect_right(starts, t_ns) - 1
    if index >= 0 and schedule[index].covers(t_ns):
        return schedule[index], False

    def distance(factor: Factor) -> float:
        if factor.valid_from_ns is not None and t_ns < factor.valid_from_ns:
            return factor.valid_from_ns - t_ns
        if factor.valid_to_ns is not None and t_ns >= factor.valid_to_ns:
            return t_ns - factor.valid_to_ns + 1
        return 0.0

    return min(schedule, key=distance), True


def split_by_factors(
    pieces: Sequence[FactorPiece], schedule: Sequence[Factor]
) -> tuple[list[FactorUse], list[Flag]]:
    """Each piece's activity under the factor valid at the piece's middle, merged per factor.

    ``pieces`` are already cut at the schedule's changes (:func:`cut_points`), so one factor
    holds over each piece."""
    merged: dict[Factor, tuple[list[float], list[float], list[float]]] = {}
    flags: list[Flag] = []
    for interval, activity, measured, uncertainty in pieces:
        middle = interval.start_ns + (interval.end_ns - interval.start_ns) // 2
        factor, extrapolated = factor_at(schedule, middle)
        if extrapolated:
            flags.append(
                Flag(
                    "factor_extrapolated",
                    f"no {factor.carrier} factor ({factor.set}, '{factor.source}') is valid "
                    f"from {iso_from_ns(interval.start_ns)} to {iso_from_ns(interval.end_ns)}: "
                    f"the nearest one ({factor.value:g} {factor.unit}) is used",
                    interval.start_ns,
                )
            )
        activities, measures, bounds = merged.setdefault(factor, ([], [], []))
        activities.append(activity)
        measures.append(measured)
        bounds.append(uncertainty)
    uses = [
        FactorUse(factor, math.fsum(a), math.fsum(m), math.fsum(u))
        for factor, (a, m, u) in merged.items()
    ]
    uses.sort(key=lambda use: use.factor.valid_from_ns or 0)
    return uses, list(dict.fromkeys(flags))


def rescale(pieces: Sequence[FactorPiece], total: float, measured: float) -> list[FactorPiece]:
    """Pieces whose activities add up to ``total`` (and measured parts to ``measured``).

    Sub-window attributions add up to the whole window's to rounding; the whole window's
    numbers are the record's, so the pieces are scaled to them. Pieces of zero total keep
    equal shares of nothing."""
    activity_sum = math.fsum(piece[1] for piece in pieces)
    measured_sum = math.fsum(piece[2] for piece in pieces)
    out = []
    for interval, activity, part_measured, uncertainty in pieces:
        share = activity / activity_sum if activity_sum else 1.0 / len(pieces)
        measured_share = part_measured / measured_sum if measured_sum else share
        out.append((interval, total * share, measured * measured_share, uncertainty))
    return out


def uses_by_set(
    carrier: str,
    pieces: Sequence[FactorPiece],
    schedules: Mapping[str, Sequence[Factor]],
) -> tuple[dict[str, list[FactorUse]], list[Flag]]:
    """Per factor set (location, market): the factor uses of one carrier's pieces."""
    out: dict[str, list[FactorUse]] = {}
    flags: list[Flag] = []
    for name, schedule in schedules.items():
        uses, found = split_by_factors(pieces, schedule)
        if not uses:
            raise ValueError(f"no activity pieces for {carrier}")
        out[name] = uses
        flags += found
    return out, flags
