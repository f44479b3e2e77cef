"""Order and lot records: numbers, identity, and the JSON Schema that ships with them."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.attribution.allocation import allocate
from edge_agent.attribution.model import (
    Factor,
    Flag,
    Interval,
    MeterAllocation,
    MeterSeries,
    OrderSpan,
    Reading,
    StateChange,
)
from edge_agent.attribution.records import (
    OrderFacts,
    Record,
    build_lot_record,
    build_order_record,
    record_id,
)

S = 1_000_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "edge_agent/schemas/lot-record.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
GRID = Factor("electricity", 0.45, "kgCO2e/kWh", "grid avg", "2024", primary=False)
CONTRACT = Factor("electricity", 0.02, "kgCO2e/kWh", "PPA", "2024", primary=True)
GAS = Factor("city_gas", 2.23, "kgCO2e/m3", "supplier", "2024", primary=False)


def facts(order_id: str = "o-1", quantity: float | None = 20, **changes: Any) -> OrderFacts:
    base: dict[str, Any] = {
        "site_id": "site", "line_id": "line-1", "lot_id": "lot-1", "order_id": order_id,
        "equipment_id": "laser", "product_id": "P-1", "start_ns": T0 + 2 * S,
        "end_ns": T0 + 8 * S, "quantity_good": quantity, "quantity_scrap": 1, "unit": "piece",
    }  # fmt: skip
    base.update(changes)
    return OrderFacts(**base)


def steady(
    meter_id: str, kw: float, *, unit: str = "kWh", carrier: str | None = None
) -> MeterSeries:
    """A counter read every second over [T0, T0 + 10 s] at a steady rate (kW or m3/h)."""
    readings = tuple(Reading(T0 + i * S, 100 + i * kw / 3600) for i in range(11))
    return MeterSeries(meter_id, "energy", "counter", readings, unit, 40.0, 5.0, carrier=carrier)


def allocation(series: MeterSeries, quantity: float | None = 20) -> MeterAllocation:
    span = OrderSpan("o-1", (Interval(T0 + 2 * S, T0 + 8 * S),), quantity)
    states = [StateChange(T0, "running"), StateChange(T0 + 6 * S, "idle")]
    return allocate(series, [span], Interval(T0 + 2 * S, T0 + 8 * S), "equal", states)


def order_record(quantity: float | None = 20, factor: Factor = GRID, revision: int = 1) -> Record:
    return build_order_record(
        facts(quantity=quantity),
        [allocation(steady("m-laser", 18.0), quantity)],  # 18 kW for 6 s = 0.03 kWh
        {"electricity": factor},
        "electricity",
        revision=revision,
    )


def test_order_record_numbers_and_schema() -> None:
    record = order_record()
    payload = record.to_json_dict()
    VALIDATOR.validate(payload)
    assert list(payload)[:4] == ["record_id", "schema_version", "kind", "revision"]
    assert payload["energy_kwh"] == pytest.approx(0.03)
    assert payload["co2e_kg"] == pytest.approx(0.03 * 0.45)
    assert payload["co2e_kg_per_unit"] == pytest.approx(0.03 * 0.45 / 20)
    assert payload["kwh_per_unit"] == pytest.approx(0.03 / 20)
    assert payload["measured_share"] == 1.0
    assert payload["coverage"] == 1.0
    assert payload["primary_data_share"] == 0.0  # grid-average factor: never primary
    assert payload["meters"][0]["first_reading"] == {
        "ts": "2026-01-01T00:00:02.000Z",
        "value": 100.01,
    }
    assert payload["meters"][0]["sample_count"] == 7
    assert payload["states"]["running"] == {"energy_kwh": pytest.approx(0.02), "seconds": 4.0}
    assert payload["states"]["idle"] == {"energy_kwh": pytest.approx(0.01), "seconds": 2.0}
    assert payload["start"] == "2026-01-01T00:00:02.000Z"
    assert payload["emission_factors"]["electricity"]["source"] == "grid avg"
    assert {f["code"] for f in payload["flags"]} == {"secondary_emission_factor"}
    assert json.loads(record.to_json()) == payload
    # the dict is a copy: changing it does not change the record
    payload["energy_kwh"] = 99.0
    assert record.payload["energy_kwh"] != 99.0


def test_primary_factor_makes_measured_energy_primary() -> None:
    assert order_record(factor=CONTRACT).payload["primary_data_share"] == 1.0


def test_zero_or_missing_quantity_gives_null_intensity_and_a_flag() -> None:
    for quantity in (0, None):
        payload = order_record(quantity=quantity).to_json_dict()
        VALIDATOR.validate(payload)
        assert payload["co2e_kg_per_unit"] is None
        assert payload["kwh_per_unit"] is None
        assert "no_good_quantity" in {f["code"] for f in payload["flags"]}


def test_two_carriers_add_co2e_and_weight_quality_by_co2e() -> None:
    # electricity 18 kW for 6 s = 0.03 kWh x 0.02 (primary) = 0.0006 kg;
    # gas 36 m3/h for 6 s = 0.06 m3 x 2.23 (secondary) = 0.1338 kg.
    electricity = allocation(steady("m-el", 18.0))
    gas = allocation(steady("m-gas", 36.0, unit="m3", carrier="city_gas"))
    record = build_order_record(
        facts(), [electricity, gas], {"electricity": CONTRACT, "city_gas": GAS}, "electricity",
        revision=1, extra_flags=[Flag("final_by_timeout", "tail estimated")],
    )  # fmt: skip
    payload = record.to_json_dict()
    VALIDATOR.validate(payload)
    assert payload["energy_kwh"] == pytest.approx(0.03)  # electricity only
    assert payload["co2e_kg"] == pytest.approx(0.0006 + 0.1338)
    assert [c["carrier"] for c in payload["carriers"]] == ["electricity", "city_gas"]
    assert payload["carriers"][1]["quantity"] == pytest.approx(0.06)
    assert payload["carriers"][1]["unit"] == "m3"
    assert payload["primary_data_share"] == pytest.approx(0.0006 / 0.1344)
    codes = [f["code"] for f in payload["flags"]]
    assert "final_by_timeout" in codes
    assert codes.count("secondary_emission_factor") == 1  # gas only


def test_record_id_depends_on_identity_only() -> None:
    assert order_record().record_id == order_record(quantity=7, revision=2).record_id
    assert record_id("site", "order", "lot-1", "o-1", "laser") == order_record().record_id
    assert record_id("site", "order", "lot-1", "o-2", "laser") != order_record().record_id
    assert record_id("site", "order", "lot-1", "o-1", "press") != order_record().record_id
    assert record_id("site", "lot", "lot-1", None, None) != record_id(
        "site", "lot", "lot-2", None, None
    )
    # fields never run into each other: ("a", "bc") is not ("ab", "c")
    assert record_id("s", "order", "a", "bc", "e") != record_id("s", "order", "ab", "c", "e")
    with pytest.raises(ValueError, match="revision"):
        order_record(revision=0)


IVI_STEPS = [  # step, equipment, kg CO2e from the IVI worked example (grid factor 0.5)
    ("cut", "laser", 0.22), ("bend", "press", 0.04), ("weld", "robot", 0.83),
    ("paint", "booth", 0.45), ("assemble", "bench", 0.14),
]  # fmt: skip


def ivi_orders() -> list[dict[str, Any]]:
    factor = Factor("electricity", 0.5, "kgCO2e/kWh", "grid", "2024", primary=False)
    records = []
    for index, (step, equipment, kg) in enumerate(IVI_STEPS):
        kw = kg / 0.5 / (6 / 3600)  # energy kg / 0.5 kWh over the 6 s order
        readings = tuple(Reading(T0 + i * S, 100 + i * kw / 3600) for i in range(11))
        series = MeterSeries(f"m-{equipment}", "energy", "counter", readings, "kWh", 2000.0, 5.0)
        alloc = allocate(
            series, [OrderSpan(step, (Interval(T0 + 2 * S, T0 + 8 * S),), 20)],
            Interval(T0 + 2 * S, T0 + 8 * S),
        )  # fmt: skip
        fact = facts(step, equipment_id=equipment, end_ns=T0 + (8 + index) * S,
                     quantity_good=20 - (index == 4))  # fmt: skip
        records.append(
            build_order_record(fact, [alloc], {"electricity": factor}, "electricity", revision=1)
            .to_json_dict()
        )  # fmt: skip
    return records


def test_lot_record_of_the_ivi_enclosure_example() -> None:
    orders = ivi_orders()
    lot = build_lot_record("site", "lot-1", list(reversed(orders)), quantity_good=None, revision=1)
    payload = lot.to_json_dict()
    VALIDATOR.validate(payload)
    assert payload["co2e_kg"] == pytest.approx(1.68)
    assert payload["energy_kwh"] == pytest.approx(3.36)
    assert payload["steps"] == 5
    assert [o["order_id"] for o in payload["orders"]] == [s for s, _, _ in IVI_STEPS]
    assert payload["quantity_good"] == 19  # the last finished step's (assembly) good output
    assert payload["co2e_kg_per_unit"] == pytest.approx(1.68 / 19)
    assert payload["quantity_scrap"] == 5  # 1 per step
    assert payload["line_id"] == "line-1"
    assert payload["start"] == "2026-01-01T00:00:02.000Z"
    assert payload["end"] == "2026-01-01T00:00:12.000Z"
    assert len(payload["meters"]) == 5
    assert payload["emission_factors"]["electricity"]["value"] == 0.5
    assert lot.record_id == record_id("site", "lot", "lot-1", None, None)
    # the lot_complete event's good quantity wins
    given = build_lot_record("site", "lot-1", orders, quantity_good=18, revision=2)
    assert given.payload["quantity_good"] == 18
    assert given.record_id == lot.record_id


def test_lot_without_orders_or_quantity_is_flagged_not_an_error() -> None:
    payload = build_lot_record("site", "lot-9", [], quantity_good=None, revision=1).to_json_dict()
    VALIDATOR.validate(payload)
    assert payload["co2e_kg_per_unit"] is None
    assert {f["code"] for f in payload["flags"]} == {"no_good_quantity", "no_orders"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 50.0), min_size=2, max_size=20),
    st.integers(0, 30),
    st.integers(1, 30),
    st.one_of(st.none(), st.floats(0.0, 1e6)),
    st.sampled_from([GRID, CONTRACT]),
    st.booleans(),
)
def test_every_built_record_validates(
    powers: list[float], start_s: int, length_s: int, quantity: float | None,
    factor: Factor, with_power_meter: bool,
) -> None:  # fmt: skip
    t = T0
    counter_readings, power_readings = [Reading(T0, 10.0)], []
    for kw in powers:
        power_readings.append(Reading(t, kw))
        t += 2 * S
        counter_readings.append(Reading(t, counter_readings[-1].value + kw * 2 / 3600))
    window = Interval(T0 + start_s * S, T0 + (start_s + length_s) * S)
    span = OrderSpan("o-1", (window,), quantity)
    series = [MeterSeries("m", "e", "counter", tuple(counter_readings), "kWh", 50.0, 5.0)]
    if with_power_meter:
        series.append(MeterSeries("p", "p", "power", tuple(power_readings), "kWh", 50.0, 5.0))
    allocations = [allocate(s, [span], window) for s in series]
    record = build_order_record(
        facts(quantity=quantity, start_ns=window.start_ns, end_ns=window.end_ns),
        allocations, {"electricity": factor}, "electricity", revision=1,
    )  # fmt: skip
    payload = record.to_json_dict()
    VALIDATOR.validate(payload)
    expected = math.fsum(a.orders["o-1"].energy for a in allocations)
    assert payload["energy_kwh"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    lot = build_lot_record("site", "lot-1", [payload, payload], quantity_good=quantity, revision=1)
    VALIDATOR.validate(lot.to_json_dict())


def _broken(payload: Mapping[str, Any], change: str, path: str) -> dict[str, Any]:
    broken = copy.deepcopy(dict(payload))
    *parents, key = path.split(".")
    target: Any = broken
    for parent in parents:
        target = target[int(parent)] if parent.isdigit() else target[parent]
    if change == "drop":
        del target[key]
    elif change == "type":
        target[key] = "12.3"
    elif change == "range":
        target[key] = 1.5 if key.endswith("share") or key == "coverage" else -1
    else:
        target[key] = "kilo"
    return broken


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ("drop", "energy_kwh"),
        ("drop", "record_id"),
        ("drop", "order_id"),
        ("drop", "meters.0.first_reading"),
        ("drop", "carriers.0.emission_factor"),
        ("type", "co2e_kg"),
        ("type", "revision"),
        ("type", "meters.0.sample_count"),
        ("range", "measured_share"),
        ("range", "primary_data_share"),
        ("range", "revision"),
        ("other", "kind"),
        ("other", "start"),
        ("extra", "surprise"),
    ],
)
def test_schema_rejects_broken_order_records(change: str, path: str) -> None:
    payload = order_record().to_json_dict()
    VALIDATOR.validate(payload)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(_broken(payload, change, path))


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ("drop", "steps"),
        ("drop", "orders"),
        ("drop", "orders.0.record_id"),
        ("type", "steps"),
        ("type", "orders.0.co2e_kg"),
        ("range", "coverage"),
        ("extra", "order_id"),  # an order-only field on a lot record
    ],
)
def test_schema_rejects_broken_lot_records(change: str, path: str) -> None:
    payload = build_lot_record("site", "lot-1", ivi_orders(), quantity_good=None, revision=1)
    good = payload.to_json_dict()
    VALIDATOR.validate(good)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(_broken(good, change, path))


def test_a_lot_with_open_steps_says_it_is_incomplete() -> None:
    """Issue 8: a summary made while steps run carries incomplete, open_steps and a flag; the
    energy is the final steps' only."""
    orders = ivi_orders()
    done = orders[:3]
    partial = build_lot_record(
        "site", "lot-1", done, quantity_good=19, revision=1, open_orders=["paint", "assemble"]
    ).to_json_dict()
    VALIDATOR.validate(partial)
    assert (partial["incomplete"], partial["open_steps"], partial["steps"]) == (True, 2, 3)
    assert partial["energy_kwh"] == pytest.approx(math.fsum(o["energy_kwh"] for o in done))
    (flag,) = [f for f in partial["flags"] if f["code"] == "incomplete"]
    assert "assemble, paint" in flag["detail"]
    whole = build_lot_record("site", "lot-1", orders, quantity_good=19, revision=2).to_json_dict()
    VALIDATOR.validate(whole)
    assert (whole["incomplete"], whole["open_steps"], whole["steps"]) == (False, 0, 5)
    assert "incomplete" not in {f["code"] for f in whole["flags"]}
    assert whole["record_id"] == partial["record_id"]


def test_an_incomplete_flag_names_at_most_ten_open_orders() -> None:
    open_orders = [f"o-{i:02d}" for i in range(12)]
    payload = build_lot_record(
        "site", "lot-1", [], quantity_good=None, revision=1, open_orders=open_orders
    ).to_json_dict()
    VALIDATOR.validate(payload)
    (flag,) = [f for f in payload["flags"] if f["code"] == "incomplete"]
    assert "o-09 and 2 more" in flag["detail"]
    assert "o-10" not in flag["detail"]
    assert payload["open_steps"] == 12


@pytest.mark.parametrize(
    ("open_steps", "incomplete"), [(0, True), (2, False), (-1, True), (1, "yes")]
)
def test_schema_ties_incomplete_to_open_steps(open_steps: int, incomplete: Any) -> None:
    payload = build_lot_record(
        "site", "lot-1", ivi_orders(), quantity_good=None, revision=1
    ).to_json_dict()
    payload.update(open_steps=open_steps, incomplete=incomplete)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(payload)
