"""Energy-balance records, built purely from allocations (edge_agent.attribution.balance)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.attribution.allocation import allocate
from edge_agent.attribution.balance import (
    BalanceLine,
    OrderRef,
    balance_record_id,
    build_balance_record,
    period_of,
    span_fingerprint,
)
from edge_agent.attribution.model import (
    Interval,
    MeterSeries,
    OrderSpan,
    Reading,
    SplitRule,
    StateChange,
)
from edge_agent.balances import balance_lines, touched_extent
from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.mes.timeline import OrderTimeline
from edge_agent.publish.topics import balance_topic

S = 1_000_000_000
H = 3600 * S
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "edge_agent/schemas/energy-balance.schema.json"
    ).read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def steady_counter(meter_id: str, kw: float, start_s: int, end_s: int) -> MeterSeries:
    """A kWh counter read every 60 s while the load draws ``kw`` steadily."""
    readings = tuple(
        Reading(T0 + t * S, 100.0 + kw * t / 3600) for t in range(start_s, end_s + 1, 60)
    )
    return MeterSeries(meter_id, "energy", "counter", readings, "kWh", 50.0, 180.0)


def at(*pieces: tuple[int, int]) -> tuple[Interval, ...]:
    return tuple(Interval(T0 + a * S, T0 + b * S) for a, b in pieces)


# -- golden -----------------------------------------------------------------------------------

PERIOD = Interval(T0, T0 + H)
# 3.6 kW on the laser's meter: 1 Wh per second. o1 runs 600-900 s, pauses (setup) until 1000 s,
# runs to 1800 s; o2 runs 1500-2400 s: 300 s shared, split equally.
ORDERS = [
    OrderSpan("o1", at((600, 900), (1000, 1800)), 10),
    OrderSpan("o2", at((1500, 2400)), 5),
]
STATES = [
    StateChange(T0, "idle"),
    StateChange(T0 + 600 * S, "running"),
    StateChange(T0 + 900 * S, "setup"),
    StateChange(T0 + 1000 * S, "running"),
    StateChange(T0 + 2400 * S, "idle"),
]


def golden_lines() -> list[BalanceLine]:
    laser = allocate(steady_counter("m-laser", 3.6, -120, 3720), ORDERS, PERIOD, "equal", STATES)
    hvac = allocate(steady_counter("m-hvac", 1.8, -120, 3720), [], PERIOD)
    return [
        BalanceLine(laser, "laser", "electricity"),
        BalanceLine(hvac, None, "electricity"),
    ]


REFS = {"o1": OrderRef("lot-1", "laser"), "o2": OrderRef("lot-2", "laser")}


def test_golden_balance_of_one_hour() -> None:
    record = build_balance_record("s1", PERIOD, golden_lines(), REFS, revision=1)
    payload = record.to_json_dict()
    VALIDATOR.validate(payload)
    assert record.record_id == balance_record_id("s1", PERIOD) == payload["record_id"]
    assert list(payload)[:4] == ["record_id", "schema_version", "kind", "revision"]
    expected_top = {
        "kind": "balance", "revision": 1, "site_id": "s1",
        "start": "2026-01-01T00:00:00.000Z", "end": "2026-01-01T01:00:00.000Z",
        "period_s": 3600.0,
        "metered_kwh": 5.4, "to_orders_kwh": 1.7, "idle_kwh": 1.9, "unallocated_kwh": 1.8,
        "measured_share": 1.0, "coverage": 1.0,
    }  # fmt: skip
    assert {key: payload[key] for key in expected_top} == pytest.approx(expected_top)
    assert payload["orders"] == [
        {"order_id": "o1", "lot_id": "lot-1", "equipment_id": "laser", "energy_kwh": 0.95},
        {"order_id": "o2", "lot_id": "lot-2", "equipment_id": "laser", "energy_kwh": 0.75},
    ]
    [site] = payload["carriers"]
    assert {k: v for k, v in site.items() if k != "uncertainty"} == {
        "carrier": "electricity", "unit": "kWh",
        "metered": 5.4, "to_orders": 1.7, "idle": 1.9, "unallocated": 1.8,
    }  # fmt: skip
    laser, hvac = payload["meters"]
    assert (laser["meter_id"], laser["equipment_id"], laser["method"]) == (
        "m-laser",
        "laser",
        "counter",
    )
    assert (laser["metered"], laser["to_orders"], laser["idle"], laser["unallocated"]) == (
        3.6,
        1.7,
        1.9,
        0.0,
    )
    assert laser["orders"] == {"o1": 0.95, "o2": 0.75}
    # idle = no order running: before o1, o1's pause (setup) and after o2
    assert laser["idle_states"] == {
        "idle": {"energy": 1.8, "seconds": 1800.0},
        "setup": {"energy": 0.1, "seconds": 100.0},
    }
    assert laser["first_reading"]["ts"] == "2026-01-01T00:00:00.000Z"
    assert laser["sample_count"] == 61
    # a meter of no equipment: all of it unallocated, nothing to orders or idle
    assert (hvac["equipment_id"], hvac["metered"], hvac["unallocated"]) == (None, 1.8, 1.8)
    assert (hvac["to_orders"], hvac["idle"], hvac["orders"], hvac["idle_states"]) == (
        0.0,
        0.0,
        {},
        {},
    )
    assert payload["uncertainty_kwh"] == pytest.approx(laser["uncertainty"] + hvac["uncertainty"])
    assert payload["flags"] == []


def test_the_record_id_is_the_identity_never_the_numbers() -> None:
    first = build_balance_record("s1", PERIOD, golden_lines(), REFS, revision=1)
    fewer = build_balance_record("s1", PERIOD, golden_lines()[:1], REFS, revision=2)
    assert first.record_id == fewer.record_id
    assert first.payload["metered_kwh"] != fewer.payload["metered_kwh"]
    next_hour = Interval(PERIOD.end_ns, PERIOD.end_ns + H)
    assert balance_record_id("s1", next_hour) != first.record_id
    assert balance_record_id("s2", PERIOD) != first.record_id
    # a period of another length starting at the same instant is another record
    assert balance_record_id("s1", Interval(PERIOD.start_ns, PERIOD.start_ns + H // 4)) != (
        first.record_id
    )
    with pytest.raises(ValueError, match="revision"):
        build_balance_record("s1", PERIOD, golden_lines(), REFS, revision=0)


def test_carriers_and_shared_meters_are_kept_apart() -> None:
    laser = allocate(steady_counter("m-laser", 3.6, -120, 3720), ORDERS, PERIOD)
    gas = allocate(
        MeterSeries(
            "m-gas", "volume", "counter",
            tuple(Reading(T0 + t * S, 5.0 + t / 3600) for t in range(-120, 3721, 60)),
            "m3", 50.0, 180.0,
        ),
        [], PERIOD,
    )  # fmt: skip
    lines = [
        BalanceLine(laser, "laser", "electricity"),
        BalanceLine(laser, "press", "electricity"),  # the same meter configured twice
        BalanceLine(gas, None, None),
    ]
    payload = build_balance_record("s1", PERIOD, lines, REFS, revision=1).to_json_dict()
    VALIDATOR.validate(payload)
    assert [(c["carrier"], c["unit"], c["metered"]) for c in payload["carriers"]] == [
        ("electricity", "kWh", 7.2),
        (None, "m3", 1.0),
    ]
    assert payload["metered_kwh"] == 7.2  # electricity only
    assert [flag["code"] for flag in payload["flags"]] == ["meter_shared"]
    assert "laser, press" in payload["flags"][0]["detail"]


def test_periods_align_to_utc_midnight() -> None:
    t = T0 + 5 * H + 17 * S
    assert period_of(t, H) == Interval(T0 + 5 * H, T0 + 6 * H)
    assert period_of(T0 + 5 * H, H) == Interval(T0 + 5 * H, T0 + 6 * H)
    assert period_of(t, 900 * S).start_ns == T0 + 5 * H


def test_the_fingerprint_sees_only_the_period() -> None:
    period = Interval(T0 + 1000 * S, T0 + 2000 * S)
    spans = [
        OrderSpan("b", at((1500, 2500)), 3),
        OrderSpan("a", at((0, 500), (900, 1200)), 2),
        OrderSpan("c", at((0, 900)), 1),  # outside: not in it
    ]
    assert span_fingerprint(spans, period, "equal") == [
        ["a", [[T0 + 1000 * S, T0 + 1200 * S]], None],
        ["b", [[T0 + 1500 * S, T0 + 2000 * S]], None],
    ]
    # an order's time outside the period changes nothing
    moved = [OrderSpan("b", at((1500, 3000)), 3), *spans[1:]]
    assert span_fingerprint(moved, period, "equal") == span_fingerprint(spans, period, "equal")
    # the quantity matters only to a quantity split
    assert span_fingerprint(spans, period, "quantity")[0][2] == 2


# -- properties -------------------------------------------------------------------------------


@st.composite
def plants(draw: st.DrawFn) -> tuple[MeterSeries, list[OrderSpan], list[StateChange], int]:
    """A counter read at irregular times (with gaps), orders with pauses and overlaps,
    machine states, and a period length that cuts the orders into several periods."""
    count = draw(st.integers(2, 40))
    gaps = draw(st.lists(st.integers(S // 10, 600 * S), min_size=count - 1, max_size=count - 1))
    powers = draw(st.lists(st.floats(0.0, 40.0), min_size=count - 1, max_size=count - 1))
    t, value = T0 - 300 * S, draw(st.floats(0.0, 5000.0))
    readings = [Reading(t, value)]
    for gap, power in zip(gaps, powers, strict=True):
        t += gap
        value += power * gap / H
        readings.append(Reading(t, value))
    series = MeterSeries("m", "energy", "counter", tuple(readings), "kWh", 60.0, 60.0)
    orders = []
    for index in range(draw(st.integers(0, 4))):
        cuts = sorted(draw(st.lists(st.integers(0, 4 * 3600), min_size=2, max_size=6)))
        intervals = at(*((a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a))
        if intervals:
            quantity = draw(st.one_of(st.none(), st.floats(0.0, 100.0)))
            orders.append(OrderSpan(f"o{index}", intervals, quantity))
    times = sorted(draw(st.lists(st.integers(-600, 4 * 3600), max_size=6)))
    states = [
        StateChange(T0 + s * S, draw(st.sampled_from(["idle", "running", "setup"]))) for s in times
    ]
    period_s = draw(st.sampled_from([60, 300, 900, 3600]))
    return series, orders, states, period_s


def _overlapping(orders: list[OrderSpan], period: Interval) -> list[OrderSpan]:
    return [
        o
        for o in orders
        if any(i.start_ns < period.end_ns and i.end_ns > period.start_ns for i in o.intervals)
    ]


@settings(max_examples=200, deadline=None)
@given(plants(), st.sampled_from(["equal", "quantity"]), st.booleans())
def test_balances_conserve_and_add_up_to_the_order_records(
    plant: tuple[MeterSeries, list[OrderSpan], list[StateChange], int],
    split: SplitRule,
    with_unattached: bool,
) -> None:
    series, orders, states, period_s = plant
    period_ns = period_s * S
    first = period_of(T0, period_ns).start_ns
    periods = [Interval(t, t + period_ns) for t in range(first, T0 + 4 * H + 1, period_ns)]
    refs = {o.order_id: OrderRef("lot", "eq") for o in orders}
    per_order: dict[str, list[float]] = {o.order_id: [] for o in orders}
    metered: list[float] = []
    for period in periods:
        allocation = allocate(series, _overlapping(orders, period), period, split, states)
        lines = [BalanceLine(allocation, "eq", "electricity")]
        if with_unattached:
            lines.append(BalanceLine(allocate(series, [], period), None, "electricity"))
        payload = build_balance_record("s1", period, lines, refs, revision=1).to_json_dict()
        for line in payload["meters"]:
            given_out = line["to_orders"] + line["idle"] + line["unallocated"]
            assert close(given_out, line["metered"])
            assert close(math.fsum(line["orders"].values()), line["to_orders"])
        site = payload["metered_kwh"]
        assert close(
            payload["to_orders_kwh"] + payload["idle_kwh"] + payload["unallocated_kwh"], site
        )
        assert close(allocation.total * (2 if with_unattached else 1), site)
        metered.append(allocation.total)
        for entry in payload["orders"]:
            per_order[entry["order_id"]].append(entry["energy_kwh"])
    # the periods tile the window: their metered energy is the window's
    whole = allocate(series, [], Interval(periods[0].start_ns, periods[-1].end_ns))
    assert close(math.fsum(metered), whole.total)
    # each order's entries add up to what its order record gets (build_order: its own window,
    # itself and every order that overlapped it, the same split)
    for order in orders:
        window = Interval(order.intervals[0].start_ns, order.intervals[-1].end_ns)
        others = [o for o in orders if o is not order and _overlapping([o], window)]
        record = allocate(series, [order, *others], window, split, states)
        assert close(math.fsum(per_order[order.order_id]), record.orders[order.order_id].energy)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ("kind", "order"),
        ("metered_kwh", None),
        ("orders", "not a list"),
        ("record_id", "not-a-uuid"),
    ],
)
def test_the_schema_rejects_broken_balances(change: str, path: Any) -> None:
    payload = build_balance_record("s1", PERIOD, golden_lines(), REFS, revision=1).to_json_dict()
    payload[change] = path
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(payload)


# -- configuration and meter lines ------------------------------------------------------------


def plant_config(**balance: Any) -> dict[str, Any]:
    energy = {"energy": {"address": 0, "type": "float64", "unit": "kWh", "role": "energy"}}
    state = {"state": {"address": 9, "role": "state", "states": {0: "off", 1: "running"}}}

    def meter(meter_id: str, points: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"id": meter_id, "protocol": "modbus_tcp", "host": "h", "points": points, **more}

    derived = {"meter": "m-spare", "idle_above_kw": 0.5, "running_above_kw": 5}
    return {
        "site": {"id": "s1"},
        "meters": [
            meter("m-laser", energy),
            meter("m-plc", state),
            meter("m-spare", energy),
            meter("m-main", energy),
            meter("m-off", energy, enabled=False),
            meter("m-hvac", energy),
        ],
        "equipment": [
            {"id": "laser", "meters": ["m-laser"], "max_power_kw": 40, "state": derived},
        ],
        "balance": balance,
        "emission_factors": {
            "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"}
        },
    }


def test_meter_lines_are_the_equipment_meters_then_the_meters_of_no_equipment(
    tmp_path: Path,
) -> None:
    config = parse_config(plant_config(exclude_meters=["m-main"]), tmp_path)
    lines = [(line.meter_id, line.point, line.equipment) for line in balance_lines(config)]
    # m-spare reads the laser's state, m-plc has no energy point, m-main is excluded (a main
    # incomer would count the sub-meters again), m-off is disabled
    assert lines == [
        ("m-laser", "energy", config.equipment[0]),
        ("m-hvac", "energy", None),
    ]
    assert config.balance.period_s == 3600
    assert config.balance_settle_s == 30.0  # the longest final_timeout_s
    assert parse_config(plant_config(settle_s=5), tmp_path).balance_settle_s == 5.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"period_s": 7}, "balance.period_s: 7 does not divide a day"),
        ({"period_s": 0}, "balance.period_s"),
        ({"exclude_meters": ["m-nope"]}, "balance.exclude_meters[0]: 'm-nope' is not a configured"),
        ({"every": 3600}, "balance.every"),
    ],
)
def test_broken_balance_configuration(
    change: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(plant_config(**change), tmp_path)
    assert any(problem.startswith(expected) for problem in caught.value.problems), (
        caught.value.problems
    )


def test_the_balance_topic_has_no_equipment_level(tmp_path: Path) -> None:
    data = plant_config()
    data["mqtt"] = {"topic_prefix": "acme"}
    assert balance_topic(parse_config(data, tmp_path)) == "acme/s1/energy-balance"
    data["mqtt"]["balance_topic"] = "{prefix}/{site}/{line}/energy-balance"
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path)
    assert any("uses {line}" in problem for problem in caught.value.problems)


def test_touched_extent_reaches_now_for_an_order_seen_running() -> None:
    timeline = OrderTimeline(
        "o1", "lot", "laser", "P", T0, T0 + 100 * S, ((T0, T0 + 100 * S),), 1, 0, "piece", ()
    )
    now = T0 + 900 * S
    assert touched_extent(timeline, None, False, now) == (T0, now)
    assert touched_extent(timeline, None, True, now) == (T0, T0 + 100 * S)
    published = {"start": "2026-01-01T00:00:00.000Z", "end": "2026-01-01T00:05:00.000Z"}
    assert touched_extent(timeline, published, True, now) == (T0, T0 + 300 * S)
