"""PACT data-quality ratings from the factors a footprint used (edge_agent.footprint.quality)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import FootprintError
from edge_agent.footprint.quality import (
    RatedInput,
    SiteGeography,
    data_quality_v2,
    data_quality_v3,
    geographical_rating_v2,
    geographical_rating_v3,
    technological_rating,
    temporal_rating_v2,
    temporal_rating_v3,
    years_apart,
)
from edge_agent.footprint.records import FactorUse

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 2, 1, tzinfo=UTC)
OSAKA = SiteGeography("JP", "JP-27")
JAPAN = SiteGeography("JP")


def factor(
    *,
    primary: bool = False,
    geography: str | None = "JP",
    reference_year: int | None = 2026,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    co2e: str = "1",
    activity: str = "1",
) -> FactorUse:
    return FactorUse(
        carrier="electricity",
        set="market" if primary else "location",
        value=Decimal("0.4"),
        unit="kgCO2e/kWh",
        source="src",
        version="v",
        primary=primary,
        geography=geography,
        reference_year=reference_year,
        valid_from=valid_from,
        valid_to=valid_to,
        activity=Decimal(activity),
        activity_unit="kWh",
        co2e_kg=Decimal(co2e),
    )


def at(year: int, month: int = 1, day: int = 1, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "distance"),
    [
        ({"reference_year": 2026}, 0),
        ({"reference_year": 2025}, 1),
        ({"reference_year": 2020}, 6),
        ({"reference_year": 2028}, 2),
        ({"reference_year": None}, None),
        # an hourly table row that covers part of the period: time-specific data
        ({"valid_from": at(2026, 1, 5, 8), "valid_to": at(2026, 1, 5, 9)}, 0),
        ({"valid_from": at(2025, 1, 1), "valid_to": None, "reference_year": 2019}, 0),
        ({"valid_from": at(2023, 1, 1), "valid_to": at(2024, 1, 1)}, 3),  # 2023 -> 2026
        ({"valid_from": at(2027, 3, 1), "valid_to": None}, 1),
    ],
)
def test_years_between_factor_and_reference_period(
    kwargs: dict[str, object], distance: int | None
) -> None:
    assert years_apart(factor(**kwargs), START, END) == distance  # type: ignore[arg-type]


def test_a_period_ending_at_new_year_is_of_the_old_year_only() -> None:
    december = (at(2025, 12, 1), at(2026, 1, 1))
    assert years_apart(factor(reference_year=2025), *december) == 0
    assert years_apart(factor(reference_year=2026), *december) == 1


@pytest.mark.parametrize(
    ("year", "v3", "v2"),
    [(2026, 1, 1), (2025, 2, 2), (2024, 3, 2), (2023, 3, 2), (2022, 4, 2), (2021, 4, 3),
     (2020, 5, 3), (None, 5, 3)],
)  # fmt: skip
def test_temporal_ratings(year: int | None, v3: int, v2: int) -> None:
    assert temporal_rating_v3(factor(reference_year=year), START, END) == v3
    assert temporal_rating_v2(factor(reference_year=year), START, END) == v2


@pytest.mark.parametrize(
    ("geography", "primary", "site", "v3", "v2"),
    [
        ("JP-27", False, OSAKA, 1, 1),
        ("JP", False, JAPAN, 1, 1),
        ("JP", False, OSAKA, 2, 1),  # national average for a site in Osaka
        ("JP-27", False, JAPAN, 2, 2),  # a subdivision we cannot check
        ("JP-13", False, OSAKA, 3, 2),  # Tokyo's grid for an Osaka site
        ("GLOBAL", False, OSAKA, 4, 3),
        ("DE", False, OSAKA, 5, 3),
        ("DE-BY", False, OSAKA, 5, 3),
        (None, False, OSAKA, 5, 3),
        (None, True, OSAKA, 1, 1),  # the site's own supply contract
        ("DE", True, OSAKA, 5, 3),
    ],
)
def test_geographical_ratings(
    geography: str | None, primary: bool, site: SiteGeography, v3: int, v2: int
) -> None:
    rated = factor(geography=geography, primary=primary)
    assert geographical_rating_v3(rated, site) == v3
    assert geographical_rating_v2(rated, site) == v2


def test_technological_rating() -> None:
    assert technological_rating(factor(primary=True)) == 1
    assert technological_rating(factor(primary=False)) == 2


def test_ratings_are_weighted_by_emissions() -> None:
    inputs = [
        RatedInput(factor(primary=True, geography=None, co2e="1"), Decimal(1), Decimal(1)),
        RatedInput(factor(reference_year=2020, geography="DE", co2e="3"), Decimal(1), Decimal(1)),
    ]
    quality = data_quality_v3(inputs, OSAKA, START, END)
    assert quality.technological == Decimal("1.75")  # (1 x 1 + 2 x 3) / 4
    assert quality.geographical == Decimal(4)  # (1 + 5 x 3) / 4
    assert quality.temporal == Decimal(4)  # (1 + 5 x 3) / 4


def test_zero_emissions_are_weighted_by_activity_then_equally() -> None:
    by_activity = [
        RatedInput(factor(primary=True, co2e="0", activity="1"), None, None),
        RatedInput(factor(co2e="0", activity="3"), None, None),
    ]
    assert data_quality_v3(by_activity, OSAKA, START, END).technological == Decimal("1.75")
    equal = [
        RatedInput(factor(primary=True, co2e="0", activity="0"), None, None),
        RatedInput(factor(co2e="0", activity="0"), None, None),
    ]
    assert data_quality_v3(equal, OSAKA, START, END).technological == Decimal("1.5")


def test_v2_completeness_and_reliability_come_from_the_steps() -> None:
    inputs = [
        RatedInput(factor(primary=True, co2e="1"), Decimal(1), Decimal(1)),  # measured, 1
        RatedInput(factor(co2e="1"), Decimal("0.5"), Decimal("0.7")),  # 0.5x2 + 0.5x3 = 2.5
    ]
    quality = data_quality_v2(inputs, OSAKA, START, END)
    assert quality.coverage_percent == 100
    assert quality.reliability == Decimal("1.75")
    assert quality.completeness == Decimal("1.5")  # coverage 1 -> 1, 0.7 -> 2


def test_no_factor_cannot_be_rated() -> None:
    with pytest.raises(FootprintError, match="no emission factor"):
        data_quality_v3([], OSAKA, START, END)


ratings = st.builds(
    factor,
    primary=st.booleans(),
    geography=st.sampled_from([None, "JP", "JP-27", "JP-13", "GLOBAL", "US", "US-CA"]),
    reference_year=st.one_of(st.none(), st.integers(1990, 2100)),
    co2e=st.decimals(0, 1000, places=3).map(str),
    activity=st.decimals(0, 1000, places=3).map(str),
)


@given(st.lists(ratings, min_size=1, max_size=8), st.sampled_from([OSAKA, JAPAN]))
def test_ratings_stay_in_their_ranges(factors: list[FactorUse], site: SiteGeography) -> None:
    inputs = [RatedInput(f, Decimal("0.5"), Decimal("0.9")) for f in factors]
    v3 = data_quality_v3(inputs, site, START, END)
    for value in (v3.technological, v3.temporal, v3.geographical):
        assert 1 <= value <= 5
    v2 = data_quality_v2(inputs, site, START, END)
    for value in (v2.technological, v2.temporal, v2.geographical, v2.completeness, v2.reliability):
        assert 1 <= value <= 3
