"""The enclosure lot of DESIGN §1, from meter readings (issue 10): five steps on their own
Modbus meters, one shared air compressor serving all five (allocated by running time, minute-
like intervals of 1 s here), and a time-varying grid factor that changes while the lot runs.

Every number is checked against a computation by hand from the simulator's ground truth (the
machines' exact energy) and the factor table: each step's direct and shared kWh, its CO2e, the
lot's total; and each record's allocation can be recomputed from the intervals it lists.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.domain import NS_PER_S, ns_from_iso
from edge_agent.footprint import GXD_SCHEMA_URL, build_gxd, build_pact_v3
from simulators.broker import LocalMosquitto
from simulators.demo import PlantHarness
from simulators.mes import LotPlan, TrueOrder
from tests.integration.test_end_to_end import validate
from tests.unit.footprint_support import assert_valid_footprint, extension
from tests.unit.footprint_support import info as footprint_info

BEFORE, AFTER = 0.5, 0.3  # kg CO2e/kWh before and after the factor change
INTERVAL_S = 1
# Energy per order is read on event (±0.5 % in the end-to-end tests); the lot adds up its steps.
TOLERANCE = 0.02
# A step's shared part is the compressor's counter interpolated at each 1 s interval edge where
# the step's share changes. The compressor's power moves by ±5 % on a 0.5 s grid and it is read
# once a second, so each such edge errs by up to a few % of a second's energy, and a 2 s step
# has three edges whose errors do not cancel: 1.6 % seen on a quiet machine, 2.07 % on a slow
# CI machine. The record's stated uncertainty must cover the error; this bounds the rest.
SHARED_TOLERANCE = 0.05


def _energy(machine: Any, intervals: list[tuple[int, int]]) -> float:
    return math.fsum(machine.energy_kwh_at(b) - machine.energy_kwh_at(a) for a, b in intervals)


def _clip(intervals: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    return [(max(s, a), min(e, b)) for s, e in intervals if min(e, b) > max(s, a)]


def _hand_shared(
    truth: list[TrueOrder], compressor: Any, start_ns: int, end_ns: int
) -> dict[str, tuple[float, float]]:
    """Per order: (shared kWh before the factor change, after it), by running time in whole
    1 s intervals, from the compressor's true energy."""
    step = INTERVAL_S * NS_PER_S
    out = {order.order_id: [0.0, 0.0] for order in truth}
    t = start_ns // step * step
    while t < end_ns:
        weights = {
            order.order_id: sum(e - s for s, e in _clip(order.occupied, t, t + step))
            for order in truth
        }
        total = sum(weights.values())
        energy = compressor.energy_kwh_at(t + step) - compressor.energy_kwh_at(t)
        for order_id, weight in weights.items():
            if weight and total:
                out[order_id][0 if t < CHANGE_AT[0] else 1] += energy * weight / total
        t += step
    return {key: (value[0], value[1]) for key, value in out.items()}


CHANGE_AT = [0]  # set by the test: when the factor changes (ns)


# Serial: the plant, the MES and the agent share this process's event loop, and 2 s steps
# polled every second leave the 2 % tolerance little room for a read-on-event delayed by other
# tests on the two cores (shared kWh once came out 2.003 % off in the parallel run).
@pytest.mark.serial
async def test_enclosure_lot_with_a_shared_compressor_and_a_factor_change(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    now = time.time_ns()
    CHANGE_AT[0] = (now // NS_PER_S + 9) * NS_PER_S  # mid-lot: about the third step
    harness = PlantHarness(
        tmp_path, mosquitto.host, mosquitto.port, balance={"period_s": 5, "settle_s": 2.0}
    )
    harness.add_shared_compressor(interval_s=INTERVAL_S)
    harness.use_factor_table(
        [
            (now - 3600 * NS_PER_S, CHANGE_AT[0], BEFORE),
            (CHANGE_AT[0], now + 3600 * NS_PER_S, AFTER),
        ]
    )
    async with harness:
        truth = await harness.run_plan([LotPlan("LOT-ENCL", "ENCL-400x300", 20)], step_s=2.0)
        consumer = harness.consumer
        assert consumer is not None
        assert await consumer.wait_for(orders=len(truth), lots=1, timeout_s=30)
        orders = consumer.latest("order")
        (lot,) = consumer.latest("lot").values()
        machines = harness.machines
        last_stop = max(o.stop_ns for o in truth)
        assert await consumer.wait_for_balance(last_stop + 5 * NS_PER_S, timeout_s=20)
        balances = consumer.latest_balances()
    assert any(o.start_ns < CHANGE_AT[0] < o.stop_ns for o in truth) or any(
        o.stop_ns < CHANGE_AT[0] for o in truth
    ), "the factor change must fall inside the lot"
    by_order = {r["order_id"]: r for r in orders.values()}
    start_ns = min(o.start_ns for o in truth)
    end_ns = max(o.stop_ns for o in truth)
    shared_truth = _hand_shared(truth, machines["m-compressor"], start_ns, end_ns)
    hand_total = 0.0
    print("\nstep             direct kWh  shared kWh   kg CO2e (hand)   kg CO2e (record)")
    for order in truth:
        record = by_order[order.order_id]
        validate(record)
        machine = machines[order.meter_id]
        direct_before = _energy(machine, _clip(order.occupied, 0, CHANGE_AT[0]))
        direct_after = _energy(machine, _clip(order.occupied, CHANGE_AT[0], 2**62))
        shared_before, shared_after = shared_truth[order.order_id]
        hand_co2e = (direct_before + shared_before) * BEFORE + (direct_after + shared_after) * AFTER
        hand_total += hand_co2e
        print(
            f"{order.equipment_id:<16} {record['energy_direct_kwh']:10.5f} "
            f"{record['energy_shared_kwh']:10.5f} {hand_co2e:16.6f} {record['co2e_kg']:16.6f}"
        )
        # Direct and shared energy against the truth.
        assert record["energy_direct_kwh"] == pytest.approx(
            direct_before + direct_after, rel=TOLERANCE
        )
        shared_true = shared_before + shared_after
        assert record["energy_shared_kwh"] == pytest.approx(shared_true, rel=SHARED_TOLERANCE)
        (shared,) = [m for m in record["meters"] if m["role"] == "shared"]
        assert abs(record["energy_shared_kwh"] - shared_true) <= shared["uncertainty"]
        true_kwh = direct_before + direct_after + shared_true
        assert abs(record["energy_kwh"] - true_kwh) <= record["uncertainty_kwh"]
        assert record["energy_kwh"] == pytest.approx(
            record["energy_direct_kwh"] + record["energy_shared_kwh"], rel=1e-9
        )
        assert record["co2e_kg"] == pytest.approx(hand_co2e, rel=SHARED_TOLERANCE)
        # The record's own numbers recompute: the factors it lists times their activities ...
        used = [f for f in record["factors"] if f["reported"]]
        assert record["co2e_kg"] == pytest.approx(
            math.fsum(f["activity"] * f["value"] * f["conversion"] for f in used), rel=1e-9
        )
        assert math.fsum(f["activity"] for f in used) == pytest.approx(
            record["energy_kwh"], rel=1e-9
        )
        if order.start_ns < CHANGE_AT[0] < order.stop_ns:  # split at the change
            assert sorted(f["value"] for f in used) == [AFTER, BEFORE]
        else:
            assert len(used) == 1
        # ... and the shared part from the intervals the allocation lists.
        allocation = shared["allocation"]
        assert allocation["key"] == "running_time"
        recomputed = math.fsum(
            i["energy"] * i["weight"] / i["total_weight"] for i in allocation["intervals"]
        )
        assert recomputed == pytest.approx(shared["energy"], rel=1e-9, abs=1e-12)
        assert shared["energy"] == pytest.approx(record["energy_shared_kwh"], rel=1e-9)
        for interval in allocation["intervals"]:
            assert (
                ns_from_iso(interval["end"]) - ns_from_iso(interval["start"])
                <= INTERVAL_S * NS_PER_S
            )
    validate(lot)
    assert lot["co2e_kg"] == pytest.approx(sum(r["co2e_kg"] for r in by_order.values()), rel=1e-9)
    assert lot["co2e_kg"] == pytest.approx(hand_total, rel=TOLERANCE)
    assert lot["energy_shared_kwh"] == pytest.approx(
        sum(r["energy_shared_kwh"] for r in by_order.values()), rel=1e-9
    )
    assert lot["co2e_kg_per_unit"] == pytest.approx(lot["co2e_kg"] / 20, rel=1e-9)
    print(
        f"lot: {lot['co2e_kg']:.6f} kg CO2e (hand {hand_total:.6f}), {lot['co2e_kg_per_unit']:.6g} kg per piece"
    )
    # The energy balances split the compressor the same way: per period, metered = to orders +
    # unallocated, and over the run each order's part equals its record's shared energy.
    shared_lines = [
        line
        for b in balances
        for line in b["meters"]
        if line["shared_equipment_id"] == "air-compressor"
    ]
    assert shared_lines
    for line in shared_lines:
        assert line["metered"] == pytest.approx(
            line["to_orders"] + line["unallocated"], rel=1e-9, abs=1e-12
        )
        assert line["idle"] == 0
    first_start = min(ns_from_iso(b["start"]) for b in balances)
    checked = 0
    for order_id, record in by_order.items():
        if ns_from_iso(record["start"]) < first_start:
            continue  # its first seconds fell in a period before the balances began
        checked += 1
        in_balances = math.fsum(line["orders"].get(order_id, 0.0) for line in shared_lines)
        assert in_balances == pytest.approx(record["energy_shared_kwh"], rel=1e-6, abs=1e-9)
    assert checked >= 3
    # The lot's PACT 3.0 footprint (with the Green x Digital block) and its GxD (PACT 2.x)
    # form: valid against the published schemas, pcf = the lot's CO2e per good piece.
    created = datetime.fromtimestamp(end_ns / 1e9, tz=UTC)
    steps = list(by_order.values())
    v3 = build_pact_v3(lot, steps, footprint_info(), created_at=created, version=lot["revision"])
    assert_valid_footprint(v3, "pact-v3")
    pcf = float(v3["pcf"]["pcfExcludingBiogenicUptake"])
    assert pcf == pytest.approx(lot["co2e_kg"] / 20, rel=1e-8)
    assert pcf == pytest.approx(hand_total / 20, rel=TOLERANCE)
    gxd_block = extension(v3, GXD_SCHEMA_URL)["data"]
    assert gxd_block["calcMethod"] == "0"
    assert float(gxd_block["gateToGate"]["gateToGateFossilGhgEmissions"]) == pytest.approx(pcf)
    gxd = build_gxd(lot, steps, footprint_info(), created_at=created, version=lot["revision"])
    assert_valid_footprint(gxd, "gxd")
    print(f"PACT 3.0 pcf {v3['pcf']['pcfExcludingBiogenicUptake']} kg CO2e per piece")
