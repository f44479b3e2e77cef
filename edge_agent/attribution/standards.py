"""Standard intensities (原単位 規格値 vs 実績値): what a step of a product should take per good
unit, and how far a record is from it (pure).

A standard is configured (a process engineering figure) or derived from the last N lots of the
same product on the same equipment: the median of their kWh and kg CO2e per good unit, robust to
one bad lot. Derived standards use only lots that ended before the record's own start, so a
recomputation of the record finds the same standard.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Standard", "derive_standard", "standard_json"]


@dataclass(frozen=True, slots=True)
class Standard:
    kwh_per_unit: float
    co2e_kg_per_unit: float | None
    basis: Literal["configured", "derived"]
    source: str  # the configured source, or which lots it was derived from
    lots: tuple[str, ...] = ()


def derive_standard(history: Sequence[tuple[str, float, float]], wanted: int) -> Standard | None:
    """The median of ``history`` ((lot, kWh per unit, kg CO2e per unit), newest first) once it
    holds ``wanted`` lots; None before (a standard from two lots is no standard)."""
    if wanted <= 0 or len(history) < wanted:
        return None
    recent = list(history[:wanted])
    lots = tuple(lot for lot, _, _ in recent)
    return Standard(
        kwh_per_unit=statistics.median(kwh for _, kwh, _ in recent),
        co2e_kg_per_unit=statistics.median(co2e for _, _, co2e in recent),
        basis="derived",
        source=f"median of the last {wanted} lots",
        lots=lots,
    )


def _deviation(actual: float | None, standard: float | None) -> tuple[float | None, float | None]:
    if actual is None or standard is None:
        return None, None
    difference = actual - standard
    percent = difference / standard * 100.0 if standard > 0 else None
    return float(f"{difference:.12g}"), None if percent is None else float(f"{percent:.6g}")


def standard_json(
    standard: Standard | None, kwh_per_unit: float | None, co2e_kg_per_unit: float | None
) -> dict[str, Any] | None:
    """The record's ``standard``: the figures, their basis, and the deviation of the record's
    own intensities (positive: above the standard)."""
    if standard is None:
        return None
    kwh_difference, kwh_percent = _deviation(kwh_per_unit, standard.kwh_per_unit)
    co2e_difference, co2e_percent = _deviation(co2e_kg_per_unit, standard.co2e_kg_per_unit)
    return {
        "kwh_per_unit": float(f"{standard.kwh_per_unit:.12g}"),
        "co2e_kg_per_unit": (
            None
            if standard.co2e_kg_per_unit is None
            else float(f"{standard.co2e_kg_per_unit:.12g}")
        ),
        "basis": standard.basis,
        "source": standard.source,
        "lots": list(standard.lots),
        "deviation_kwh_per_unit": kwh_difference,
        "deviation_kwh_percent": kwh_percent,
        "deviation_co2e_kg_per_unit": co2e_difference,
        "deviation_co2e_percent": co2e_percent,
    }
