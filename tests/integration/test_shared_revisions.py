"""A correction on one equipment re-issues the orders on the other equipment of a shared
compressor (issue 10): they split the compressor's intervals with the corrected order, so their
shared part changes; the parts and the unallocated rest still add up to the compressor's energy.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from edge_agent.domain import NS_PER_S
from simulators.broker import LocalMosquitto
from simulators.demo import PlantHarness
from simulators.mes import LotPlan, event
from simulators.plant import ENCLOSURE_LINE
from tests.integration.test_mes_corrections import revisions, wait_until

STEPS = ENCLOSURE_LINE[:2]  # laser cutter and press brake, both on the compressor


async def test_a_corrected_stop_reissues_the_orders_sharing_the_compressor(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    harness = PlantHarness(tmp_path, mosquitto.host, mosquitto.port, steps=STEPS)
    harness.add_shared_compressor(interval_s=1)
    lot_a, lot_b = LotPlan("LOT-A", "ENCL-1", 10), LotPlan("LOT-B", "ENCL-1", 10)
    async with harness:
        mes = harness.mes
        assert mes is not None
        machines = harness.machines
        t0 = time.time_ns()
        laser, press = "LOT-A-laser", "LOT-B-press"
        # Both run at the same time for 3 s.
        await mes.publish(
            event(
                "start", t0, lot_a, order_id=laser, equipment_id="laser-cutter", product_id="ENCL-1"
            )
        )
        await mes.publish(
            event(
                "start", t0, lot_b, order_id=press, equipment_id="press-brake", product_id="ENCL-1"
            )
        )
        machines["m-laser"].set_state("running", t0)
        machines["m-press"].set_state("running", t0)
        await asyncio.sleep(3.0)
        stop_ns = time.time_ns()
        machines["m-laser"].set_state("idle", stop_ns)
        machines["m-press"].set_state("idle", stop_ns)
        stop = event(
            "stop",
            stop_ns,
            lot_a,
            order_id=laser,
            equipment_id="laser-cutter",
            quantity_good=10,
            quantity_scrap=0,
        )
        stop["event_id"] = "laser-stop"
        await mes.publish(stop)
        await mes.publish(
            event(
                "stop",
                stop_ns,
                lot_b,
                order_id=press,
                equipment_id="press-brake",
                quantity_good=10,
                quantity_scrap=0,
            )
        )
        await wait_until(lambda: 1 in revisions(harness, laser) and 1 in revisions(harness, press))
        first_press = revisions(harness, press)[1]
        first_laser = revisions(harness, laser)[1]
        # The MES corrects the laser's stop: it really stopped after 1.5 s. Its share of the
        # compressor shrinks; the press order, alone on the compressor afterwards, gets more.
        fixed = {**stop, "event_id": "laser-stop-fixed", "supersedes": "laser-stop",
                 "ts": event("stop", t0 + int(1.5 * NS_PER_S), lot_a)["ts"]}  # fmt: skip
        await mes.publish(fixed)
        await wait_until(lambda: 2 in revisions(harness, laser) and 2 in revisions(harness, press))
        second_laser = revisions(harness, laser)[2]
        second_press = revisions(harness, press)[2]
    assert second_laser["energy_shared_kwh"] < first_laser["energy_shared_kwh"]
    assert second_press["energy_shared_kwh"] > first_press["energy_shared_kwh"]

    # Conservation across both records in the intervals they share: each interval's energy is
    # given out once between the two orders.
    def parts(record: dict[str, object]) -> dict[str, tuple[float, float]]:
        (shared,) = [m for m in record["meters"] if m["role"] == "shared"]  # type: ignore[attr-defined, index]
        return {
            i["start"]: (i["energy"], i["energy"] * i["weight"] / i["total_weight"])
            for i in shared["allocation"]["intervals"]
        }

    laser_parts, press_parts = parts(second_laser), parts(second_press)
    for start in set(laser_parts) & set(press_parts):
        energy, laser_share = laser_parts[start]
        other_energy, press_share = press_parts[start]
        assert energy == pytest.approx(other_energy, rel=1e-9)
        assert math.isclose(laser_share + press_share, energy, rel_tol=1e-9, abs_tol=1e-12)
