"""PACT data-quality ratings (DQR) from the emission factors a footprint used.

What the PACT Tech Specs say (the files we build against): 3.0 keeps three ratings —
``technologicalDQR``, ``temporalDQR``, ``geographicalDQR`` — each "based on the data quality
matrix ... weighted average of all inputs", "between 1 and 5 inclusive" (3.0.3 OpenAPI;
changelog 3.0.0: "DQR ratings ... now range between 1 and 5"; ``coveragePercent``,
``completenessDQR`` and ``reliabilityDQR`` were removed). 2.x has five ratings from 1 to 3
(Methodology v2, Table 9) plus ``coveragePercent``. The rating criteria themselves are in the
PACT Methodology (v3: section 4.2.3 and Appendix B; v2: Table 9), which is not among those
files. The criteria below are ours, modelled on those tables as we know them — 1 is the best
rating — and applied to what a record states about each factor. Check them against the
Methodology before you rely on them; they live in this module only.

Every input is one factor applied to part of the activity (a ``factors[]`` entry of an order
record, i.e. one validity interval of one carrier's factor of the reported set); the footprint's
rating is the average of the inputs' ratings weighted by their CO2e (by activity when every
input's CO2e is zero, equally when that is zero too). All inputs are rated, so 2.x's
``coveragePercent`` is 100.

PACT 3.0 (1 very good … 5 very poor):

================  ===============================================================================
technological     1 primary factor (supplier- or contract-specific: the energy actually bought);
                  2 secondary factor (the average supply mix of the carrier, e.g. a grid average).
                  The activity itself is metered on the equipment, so it is the process's own
                  technology either way.
temporal          years between the factor's time and the footprint's reference period:
                  1 the factor's validity interval overlaps the period, or its reference year
                  lies in it; 2 one year apart; 3 two or three; 4 four or five; 5 more, or the
                  record does not say.
geographical      1 the factor's geography is the site's (its subdivision when configured, else
                  its country), or a primary factor without a geography (the site's own
                  contract); 2 the country's average for a site in a configured subdivision, or
                  a subdivision of the site's country that cannot be checked (no subdivision
                  configured); 3 another subdivision of the site's country; 4 GLOBAL;
                  5 another country, or the record does not say.
================  ===============================================================================

PACT 2.x (1 good, 2 fair, 3 poor):

================  ===============================================================================
technological     1 primary factor; 2 secondary factor.
temporal          1 same year as the reference period (as above); 2 less than five years apart;
                  3 five or more, or unknown.
geographical      1 the site's area (its country, or its subdivision); 2 another or unverifiable
                  subdivision of the site's country; 3 GLOBAL, another country, or unknown.
completeness      from the step's ``coverage`` (share of its time backed by readings):
                  1 at least 0.95; 2 at least 0.5; 3 less.
reliability       from the step's ``measured_share`` m: m × (1 with a primary factor, 2 with a
                  secondary one) + (1 − m) × 3 — measured activity with a supplier-specific
                  factor is the best, estimated activity the worst.
================  ===============================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from edge_agent.errors import FootprintError
from edge_agent.footprint.records import FactorUse

__all__ = [
    "DataQualityV2",
    "DataQualityV3",
    "RatedInput",
    "SiteGeography",
    "data_quality_v2",
    "data_quality_v3",
    "geographical_rating_v2",
    "geographical_rating_v3",
    "technological_rating",
    "temporal_rating_v2",
    "temporal_rating_v3",
    "years_apart",
]

_TICK = timedelta(microseconds=1)  # a period's end is exclusive: its last instant is end - 1 µs


@dataclass(frozen=True, slots=True)
class SiteGeography:
    country: str  # ISO 3166-1 alpha-2
    subdivision: str | None = None  # ISO 3166-2, when configured


@dataclass(frozen=True, slots=True)
class RatedInput:
    """A factor with what its step says about the activity (for 2.x's last two ratings)."""

    factor: FactorUse
    measured_share: Decimal | None  # 0..1 of the step's activity read from registers
    coverage: Decimal | None  # 0..1 of the step's time backed by readings


@dataclass(frozen=True, slots=True)
class DataQualityV3:
    technological: Decimal
    temporal: Decimal
    geographical: Decimal


@dataclass(frozen=True, slots=True)
class DataQualityV2:
    coverage_percent: Decimal
    technological: Decimal
    temporal: Decimal
    geographical: Decimal
    completeness: Decimal
    reliability: Decimal


def years_apart(factor: FactorUse, start: datetime, end: datetime) -> int | None:
    """Whole calendar years between the factor's time and the period [start, end): 0 when
    they meet; None when the record gives neither a validity interval nor a reference year."""
    first_year = start.year
    last_year = (end - _TICK).year if end > start else start.year
    if factor.valid_from is not None or factor.valid_to is not None:
        valid_from, valid_to = factor.valid_from, factor.valid_to
        if (valid_from is None or valid_from < end) and (valid_to is None or valid_to > start):
            return 0
        if valid_to is not None and valid_to <= start:
            return max(0, first_year - (valid_to - _TICK).year)
        if valid_from is not None:
            return max(0, valid_from.year - last_year)
    if factor.reference_year is None:
        return None
    if first_year <= factor.reference_year <= last_year:
        return 0
    if factor.reference_year < first_year:
        return first_year - factor.reference_year
    return factor.reference_year - last_year


def technological_rating(factor: FactorUse) -> int:
    """1 for a primary factor, 2 for a secondary one (2.x and 3.0 alike)."""
    return 1 if factor.primary else 2


def temporal_rating_v3(factor: FactorUse, start: datetime, end: datetime) -> int:
    distance = years_apart(factor, start, end)
    if distance is None:
        return 5
    for limit, rating in ((0, 1), (1, 2), (3, 3), (5, 4)):
        if distance <= limit:
            return rating
    return 5


def temporal_rating_v2(factor: FactorUse, start: datetime, end: datetime) -> int:
    distance = years_apart(factor, start, end)
    if distance is None:
        return 3
    if distance == 0:
        return 1
    return 2 if distance < 5 else 3


def _same_country(geography: str, site: SiteGeography) -> bool:
    return geography.split("-", 1)[0] == site.country


def geographical_rating_v3(factor: FactorUse, site: SiteGeography) -> int:
    geography = factor.geography
    if geography is None:
        return 1 if factor.primary else 5
    if geography == "GLOBAL":
        return 4
    if geography == (site.subdivision or site.country):
        return 1
    if not _same_country(geography, site):
        return 5
    if geography == site.country:
        return 2  # the country's average for a site whose subdivision is known
    return 2 if site.subdivision is None else 3  # a subdivision: unverifiable, or another one


def geographical_rating_v2(factor: FactorUse, site: SiteGeography) -> int:
    geography = factor.geography
    if geography is None:
        return 1 if factor.primary else 3
    if geography in (site.country, site.subdivision):
        return 1
    if geography != "GLOBAL" and _same_country(geography, site):
        return 2
    return 3


def completeness_rating_v2(coverage: Decimal | None) -> int:
    if coverage is None:
        return 3
    if coverage >= Decimal("0.95"):
        return 1
    return 2 if coverage >= Decimal("0.5") else 3


def reliability_rating_v2(factor: FactorUse, measured_share: Decimal | None) -> Decimal:
    measured = min(max(measured_share or Decimal(0), Decimal(0)), Decimal(1))
    with_factor = Decimal(1) if factor.primary else Decimal(2)
    return measured * with_factor + (1 - measured) * 3


def _weights(inputs: Sequence[RatedInput]) -> list[Decimal]:
    if not inputs:
        raise FootprintError(
            "no emission factor in the records: the data-quality ratings need at least one"
        )
    for weights in (
        [max(item.factor.co2e_kg, Decimal(0)) for item in inputs],
        [max(item.factor.activity, Decimal(0)) for item in inputs],
    ):
        if sum(weights) > 0:
            return weights
    return [Decimal(1)] * len(inputs)


def _weighted(
    inputs: Sequence[RatedInput], weights: Sequence[Decimal], rate: Callable[[RatedInput], object]
) -> Decimal:
    total = sum(weights, Decimal(0))
    return (
        sum(
            (
                weight * Decimal(str(rate(item)))
                for item, weight in zip(inputs, weights, strict=True)
            ),
            Decimal(0),
        )
        / total
    )


def data_quality_v3(
    inputs: Sequence[RatedInput], site: SiteGeography, start: datetime, end: datetime
) -> DataQualityV3:
    """PACT 3.0's three ratings (1..5) over the footprint's reference period [start, end)."""
    weights = _weights(inputs)
    return DataQualityV3(
        technological=_weighted(inputs, weights, lambda i: technological_rating(i.factor)),
        temporal=_weighted(inputs, weights, lambda i: temporal_rating_v3(i.factor, start, end)),
        geographical=_weighted(inputs, weights, lambda i: geographical_rating_v3(i.factor, site)),
    )


def data_quality_v2(
    inputs: Sequence[RatedInput], site: SiteGeography, start: datetime, end: datetime
) -> DataQualityV2:
    """PACT 2.x's five ratings (1..3) and coverage over the reference period [start, end)."""
    weights = _weights(inputs)
    return DataQualityV2(
        coverage_percent=Decimal(100),
        technological=_weighted(inputs, weights, lambda i: technological_rating(i.factor)),
        temporal=_weighted(inputs, weights, lambda i: temporal_rating_v2(i.factor, start, end)),
        geographical=_weighted(inputs, weights, lambda i: geographical_rating_v2(i.factor, site)),
        completeness=_weighted(inputs, weights, lambda i: completeness_rating_v2(i.coverage)),
        reliability=_weighted(
            inputs, weights, lambda i: reliability_rating_v2(i.factor, i.measured_share)
        ),
    )
