"""Standard intensities (pure): derivation from the last N lots and the deviation."""

from __future__ import annotations

import pytest

from edge_agent.attribution.standards import Standard, derive_standard, standard_json


def test_a_standard_needs_n_lots_and_is_their_median() -> None:
    history = [("L4", 1.0, 0.5), ("L3", 9.0, 4.5), ("L2", 1.2, 0.6), ("L1", 1.1, 0.55)]
    assert derive_standard(history[:2], 3) is None
    assert derive_standard(history, 0) is None
    standard = derive_standard(history, 3)
    assert standard is not None
    # One bad lot (L3) does not move the median far.
    assert standard.kwh_per_unit == 1.2
    assert standard.co2e_kg_per_unit == 0.6
    assert standard.lots == ("L4", "L3", "L2")
    assert standard.basis == "derived"


def test_deviation_is_signed_and_in_percent() -> None:
    standard = Standard(2.0, 1.0, "configured", "sheet")
    part = standard_json(standard, 2.5, 0.9)
    assert part is not None
    assert part["deviation_kwh_per_unit"] == pytest.approx(0.5)
    assert part["deviation_kwh_percent"] == pytest.approx(25.0)
    assert part["deviation_co2e_percent"] == pytest.approx(-10.0)
    assert standard_json(None, 1.0, 1.0) is None
    # No good quantity: no intensity, no deviation.
    empty = standard_json(standard, None, None)
    assert empty is not None
    assert empty["deviation_kwh_per_unit"] is None
    # A zero standard has no percentage.
    assert (
        standard_json(Standard(0.0, None, "configured", "s"), 1.0, 1.0)["deviation_kwh_percent"]
        is None
    )  # type: ignore[index]
