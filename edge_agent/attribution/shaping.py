"""Coarse counters shaped by the meter's power (pure).

A 0.1 kWh register on a 10 kW machine polled every second ticks once in 36 polls: between ticks
the straight-line curve is a staircase, and a short order is off by up to a whole step. When the
meter also gives its active power, the power says where the energy went and the counter says how
much: the counter "fixes the total, the power the shape".

Each tick (a reading where the counter moved) is an *anchor*: the counter crossed its new value
somewhere in the poll interval before that reading, placed at the interval's energy midpoint, so
the anchor's value is exact and its time errs by at most half that interval's energy. Between two
anchors the counter's increment is spread in proportion to the integrated power. After the last
anchor (the newest readings, where a just-stopped order usually ends) and before the first, the
power is integrated on from the anchor with the stretch's counter/power ratio. Every shaped value
stays inside what the register allows (between the reading and one step above it: the register
shows the last completed count), so shaping can never be further off than the raw curve.

Each knot carries its error as (centre, half-width) of ``true - curve`` (see
series.Cumulative.point_bound): a raw reading of a register with step r errs by [0, r), a shaped
one by ± (its anchors' timing + the power's change between polls + the ratio's drift).
"""

from __future__ import annotations

import bisect
import dataclasses
import statistics
from typing import TYPE_CHECKING

from edge_agent.attribution.model import NS_PER_HOUR, PointError

if TYPE_CHECKING:  # series calls this module on its curves
    from edge_agent.attribution.series import Cumulative

# Shape when one register step is more than the energy of a typical poll interval: below that,
# the readings themselves resolve the curve and the straight line (or power step) is as good.
COARSE_RATIO = 1.0
# Least drift assumed between the power register and the counter when the power is integrated
# beyond the anchors (a class 1 meter measures both within 1 %).
MIN_DRIFT = 0.01


def shape_counter(curve: Cumulative) -> Cumulative:
    """``curve`` with shaped values where the counter is coarse and powers are at hand."""
    step = curve.resolution
    segments = len(curve.times) - 1
    if step <= 0 or curve.powers or segments < 2 or len(curve.readings) != len(curve.times):
        return curve
    usable = [_shapeable(curve, i) for i in range(segments)]
    polls = [_power_energy(curve, i) for i in range(segments) if usable[i]]
    typical = statistics.median([e for e in polls if e > 0] or [0.0])
    if typical <= 0 or step <= COARSE_RATIO * typical:
        return curve
    values = list(curve.values)
    half = step / 2
    errors = [PointError(half, half, half, half)] * len(values)
    shaped = [False] * segments
    i = 0
    while i < segments:
        if not usable[i]:
            i += 1
            continue
        end = i
        while end < segments and usable[end]:
            end += 1
        if _shape_span(curve, i, end, values, errors):
            shaped[i:end] = [True] * (end - i)
        i = end
    if not any(shaped):
        return curve
    for k in range(1, len(values)):  # clamps may meet raw neighbours: keep C monotonic
        lift = values[k - 1] - values[k]
        if lift > 0:  # true − C moves down by as much: the bound stays true
            values[k] = values[k - 1]
            errors[k] = dataclasses.replace(
                errors[k],
                centre=errors[k].centre - lift,
                resolution_centre=errors[k].resolution_centre - lift,
            )
    return dataclasses.replace(
        curve, values=tuple(values), shaped=tuple(shaped), knot_errors=tuple(errors)
    )


def _shapeable(curve: Cumulative, i: int) -> bool:
    first, second = curve.readings[i], curve.readings[i + 1]
    return (
        not curve.estimated[i]
        and curve.times[i + 1] - curve.times[i] <= curve.gap_ns
        and first.power_kw is not None
        and second.power_kw is not None
        and first.power_kw >= 0
        and second.power_kw >= 0
    )


def _power_energy(curve: Cumulative, i: int) -> float:
    """The integrated power (trapezoid) of segment ``i``, in kWh."""
    p0 = curve.readings[i].power_kw or 0.0
    p1 = curve.readings[i + 1].power_kw or 0.0
    return (p0 + p1) / 2 * (curve.times[i + 1] - curve.times[i]) / NS_PER_HOUR


def _swing(curve: Cumulative, i: int) -> float:
    """How far the trapezoid of segment ``i`` can be off: |Δp|·Δt/2 (monotonic power)."""
    p0 = curve.readings[i].power_kw or 0.0
    p1 = curve.readings[i + 1].power_kw or 0.0
    return abs(p1 - p0) * (curve.times[i + 1] - curve.times[i]) / 2 / NS_PER_HOUR


def _shape_span(
    curve: Cumulative,
    first: int,
    end: int,
    values: list[float],
    errors: list[PointError],
) -> bool:
    """Shape knots ``first``..``end`` (a run of shapeable segments) in place; False when it
    cannot be (no tick, and the power says the counter should have ticked)."""
    raw = curve.values
    step = curve.resolution
    # Integrated power at each knot of the run, and the trapezoid's error bound up to it.
    power = [0.0]
    swing = [0.0]
    for i in range(first, end):
        power.append(power[-1] + _power_energy(curve, i))
        swing.append(swing[-1] + _swing(curve, i))
    # Anchors: (knot index, integrated power at the crossing, value, timing error bound).
    anchors = [
        (k, (power[k - 1 - first] + power[k - first]) / 2, raw[k],
         (power[k - first] - power[k - 1 - first]) / 2)
        for k in range(first + 1, end + 1)
        if raw[k] > raw[k - 1]
    ]  # fmt: skip
    if not anchors:
        return _integrate_between_ticks(curve, first, end, values, errors, power, swing)
    spent = anchors[-1][1] - anchors[0][1]
    ratio = (anchors[-1][2] - anchors[0][2]) / spent if len(anchors) > 1 and spent > 0 else 1.0
    drift = max(abs(ratio - 1.0), MIN_DRIFT)
    positions = [a[1] for a in anchors]
    for k in range(first, end + 1):
        at = power[k - first]
        after = bisect.bisect_right(positions, at)  # anchors[after - 1] <= at < anchors[after]
        shared: tuple[tuple[int, float, float], ...]
        if 0 < after < len(anchors):
            k_a, p_a, v_a, e_a = anchors[after - 1]
            k_b, p_b, v_b, e_b = anchors[after]
            fraction = (at - p_a) / (p_b - p_a) if p_b > p_a else 0.0
            value = v_a + (v_b - v_a) * fraction
            # An anchor placed a little late moves every value between it and its neighbours:
            # linearly, so an order between two ticks only feels the difference.
            shared = ((2 * k_a, 1 - fraction, e_a), (2 * k_b, fraction, e_b))
            bound = ratio * _swing_between(swing, power, p_a, p_b)
        else:
            k_x, p_x, v_x, e_x = anchors[after - 1 if after else 0]
            value = v_x + ratio * (at - p_x)
            shared = ((2 * k_x, 1.0, e_x),)
            bound = ratio * _swing_between(swing, power, min(at, p_x), max(at, p_x))
            bound += drift * ratio * abs(at - p_x)
        # The register allows [reading, reading + step): never leave it.
        clamped = min(max(value, raw[k]), raw[k] + step)
        values[k] = clamped
        if clamped != value:  # the register decided: true − C lies in [raw − C, raw + step − C]
            centre = raw[k] + step / 2 - clamped
            errors[k] = PointError(centre, step / 2, step / 2, centre)
        else:
            errors[k] = PointError(0.0, bound, bound, 0.0, shared)
    return True


def _integrate_between_ticks(
    curve: Cumulative,
    first: int,
    end: int,
    values: list[float],
    errors: list[PointError],
    power: list[float],
    swing: list[float],
) -> bool:
    """A run without a tick (an order shorter than a step, just after start-up): the energy
    is the integrated power from the run's first reading. Where the register stood inside its
    step is unknown but the same for the whole run, so it cancels inside it (a shared error)."""
    step = curve.resolution
    if power[-1] > 2 * step:
        return False  # this much power would have moved the register: they disagree
    # The register stood somewhere in [reading, reading + step): start no lower than the curve
    # before the run (shaped up to a gap, it may already be above the bare reading), so that
    # keeping the curve monotonic does not flatten the run's own increments.
    raw = curve.values[first]
    base = min(max(raw, values[first - 1] if first > 0 else raw), raw + step)
    half = step / 2
    centre = raw + half - base
    for k in range(first, end + 1):
        spent = power[k - first]
        values[k] = base + min(spent, step)
        width = min(swing[k - first] + MIN_DRIFT * spent, step)
        errors[k] = PointError(centre, width, width, centre, shared=((2 * first + 1, 1.0, half),))
    return True


def _swing_between(swing: list[float], power: list[float], low: float, high: float) -> float:
    """The trapezoid error bound accumulated over the knots whose integrated power lies in
    [low, high], plus the knot interval on either side (the anchors sit inside one)."""
    start = max(bisect.bisect_left(power, low) - 1, 0)
    stop = min(bisect.bisect_right(power, high), len(swing) - 1)
    return swing[stop] - swing[start]
