"""Standard intensities (issue 10): a configured standard and standards derived from the last N
lots, carried by the records with the deviation, through the real agent and a real store."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from simulators.broker import LocalMosquitto
from simulators.demo import PlantHarness
from simulators.mes import LotPlan, run_plan
from simulators.plant import ENCLOSURE_LINE
from tests.integration.test_end_to_end import validate

STEPS = ENCLOSURE_LINE[:2]  # laser cutter, press brake


async def test_configured_and_derived_standards_and_their_deviation(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    standards = {
        "derive_from_last_lots": 2,
        "flag_above_percent": 10,
        "items": [
            # The laser cutter's standard is set far too low: every laser record is above it.
            {"product_id": "ENCL-1", "equipment_id": "laser-cutter", "kwh_per_unit": 1e-5,
             "co2e_kg_per_unit": 5e-6, "source": "process sheet P-17 (test)"},
        ],
    }  # fmt: skip
    harness = PlantHarness(
        tmp_path, mosquitto.host, mosquitto.port, steps=STEPS, sections={"standards": standards}
    )
    lots = [LotPlan(f"LOT-{n}", "ENCL-1", 10 + n) for n in range(3)]
    async with harness:
        assert harness.mes is not None
        truth = await run_plan(
            harness.machines, harness.mes, lots, steps=STEPS, step_s=1.0, concurrent=False
        )
        consumer = harness.consumer
        assert consumer is not None
        assert await consumer.wait_for(orders=len(truth), lots=3, timeout_s=30)
        orders = consumer.latest("order")
        lot_records = consumer.latest("lot")
    by_order = {r["order_id"]: r for r in orders.values()}
    for record in [*orders.values(), *lot_records.values()]:
        validate(record)
    for n in range(3):
        laser = by_order[f"LOT-{n}-laser-cutter"]
        standard = laser["standard"]
        assert standard["basis"] == "configured"
        assert standard["source"] == "process sheet P-17 (test)"
        assert standard["deviation_kwh_per_unit"] == pytest.approx(
            laser["kwh_per_unit"] - 1e-5, rel=1e-9
        )
        assert standard["deviation_kwh_percent"] == pytest.approx(
            (laser["kwh_per_unit"] / 1e-5 - 1) * 100, rel=1e-5
        )
        assert "above_standard" in {f["code"] for f in laser["flags"]}
    # The press brake has no configured standard: derived from the last 2 lots, so only the
    # third lot has one — the median of the first two lots' intensities.
    presses = [by_order[f"LOT-{n}-press-brake"] for n in range(3)]
    assert presses[0]["standard"] is None
    assert presses[1]["standard"] is None
    derived = presses[2]["standard"]
    assert derived["basis"] == "derived"
    assert sorted(derived["lots"]) == ["LOT-0", "LOT-1"]
    assert derived["kwh_per_unit"] == pytest.approx(
        statistics.median(p["kwh_per_unit"] for p in presses[:2]), rel=1e-9
    )
    assert derived["co2e_kg_per_unit"] == pytest.approx(
        statistics.median(p["co2e_kg_per_unit"] for p in presses[:2]), rel=1e-9
    )
    assert derived["deviation_kwh_per_unit"] == pytest.approx(
        presses[2]["kwh_per_unit"] - derived["kwh_per_unit"], rel=1e-6, abs=1e-12
    )
    # Lot records: whole-lot standards derived from the last 2 lots, too.
    lots_by_id = {r["lot_id"]: r for r in lot_records.values()}
    assert lots_by_id["LOT-0"]["standard"] is None
    assert lots_by_id["LOT-2"]["standard"]["kwh_per_unit"] == pytest.approx(
        statistics.median(lots_by_id[f"LOT-{n}"]["kwh_per_unit"] for n in range(2)), rel=1e-9
    )
