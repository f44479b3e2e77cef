"""Simulators: the load model's exact energy, the counter display faults, the demo plant's
agent configuration and the MES plan runner's events (over a real Mosquitto)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.clock import FakeClock, SystemClock
from edge_agent.config import load_config, parse_config
from edge_agent.domain import NS_PER_S, ns_from_datetime
from edge_agent.mes.events import parse_event
from simulators.broker import LocalMosquitto
from simulators.machines import PROFILES, SimulatedMachine, read_truth_log
from simulators.mes import LotPlan, MesPublisher, TrueOrder, run_plan
from simulators.mes import main as mes_main
from simulators.modbus_meters import (
    STATE_REGISTER,
    PlantMeterSpec,
    SimulatedPlant,
    add_from_spec,
)
from simulators.plant import ENCLOSURE_LINE, agent_config, build_plant, plant_spec, write_config

NS_PER_HOUR = 3600 * NS_PER_S


def random_walk(machine: SimulatedMachine, clock: FakeClock, rng: random.Random) -> None:
    """State changes at random instants, all on a 10 ms grid (so a 10 ms sum is exact)."""
    for _ in range(60):
        clock.advance(rng.randint(1, 150) / 100)
        machine.set_state(rng.choice(["off", "idle", "running", "setup", "fault"]))


def test_energy_is_the_exact_integral_of_power() -> None:
    clock = FakeClock()
    start = clock.now_ns()
    machine = SimulatedMachine(PROFILES["laser-cutter"], clock, seed=7, initial_kwh=40.0)
    random_walk(machine, clock, random.Random(3))
    end = clock.now_ns()
    step = 10_000_000  # 10 ms: divides every state change and the 0.5 s noise grid
    numeric = sum(machine.power_kw_at(t) * step / NS_PER_HOUR for t in range(start, end, step))
    assert machine.energy_kwh_at(end) - 40.0 == pytest.approx(numeric, rel=1e-12, abs=1e-12)
    # And at an instant between grid points, the integral is linear inside its segment.
    middle = start + (end - start) // 3 + 1234
    cell = middle - (middle - start) % step
    expected = (
        machine.energy_kwh_at(cell) + machine.power_kw_at(cell) * (middle - cell) / NS_PER_HOUR
    )
    assert machine.energy_kwh_at(middle) == pytest.approx(expected, rel=1e-15)
    assert machine.energy_kwh_at(start - NS_PER_S) == 40.0


def test_power_is_piecewise_constant_follows_state_and_is_seeded() -> None:
    def walk(seed: int) -> tuple[SimulatedMachine, FakeClock]:
        clock = FakeClock()
        machine = SimulatedMachine(PROFILES["press-brake"], clock, seed=seed, noise_step_s=0.5)
        for state in ("running", "idle", "setup", "off", "running"):
            clock.advance(2.0)
            machine.set_state(state)
        clock.advance(2.0)
        return machine, clock

    machine, clock = walk(seed=1)
    twin, _ = walk(seed=1)
    other, _ = walk(seed=2)
    rows = machine.breakpoints()
    # 12 s on a 0.5 s noise grid, state changes on grid points: 0, 0.5, ..., 12 s.
    assert len(rows) == 25
    assert rows == twin.breakpoints()
    assert [r[2] for r in rows] != [r[2] for r in other.breakpoints()]
    for t_ns, state, power_kw, _counter in rows:
        nominal = PROFILES["press-brake"].power_kw[state]
        assert nominal * 0.95 <= power_kw <= nominal * 1.05 + 1e-12
        # constant until the next change
        assert machine.power_kw_at(t_ns + 499_999_999) == power_kw
        assert machine.state_at(t_ns + 499_999_999) == state
    assert machine.state_at(clock.now_ns() - 3 * NS_PER_S) == "off"
    assert machine.power_kw_at(clock.now_ns() - 3 * NS_PER_S) == 0.0


def test_truth_log_matches_the_model(tmp_path: Path) -> None:
    clock = FakeClock()
    log_file = tmp_path / "m.jsonl"
    machine = SimulatedMachine(PROFILES["welding-robot"], clock, seed=5, truth_log=log_file)
    random_walk(machine, clock, random.Random(11))
    machine.close()  # completes the log up to now
    rows = read_truth_log(log_file)
    assert len(rows) == len(machine.breakpoints())
    assert [r["t_ns"] for r in rows] == sorted(r["t_ns"] for r in rows)
    for row in rows:
        assert row["counter_kwh"] == pytest.approx(machine.energy_kwh_at(row["t_ns"]), abs=1e-12)
        assert row["state"] == machine.state_at(row["t_ns"])
        assert row["power_kw"] == machine.power_kw_at(row["t_ns"])


def test_a_future_query_does_not_move_a_later_state_change() -> None:
    clock = FakeClock()
    machine = SimulatedMachine(PROFILES["paint-booth"], clock, seed=1)
    machine.energy_kwh_at(clock.now_ns() + 60 * NS_PER_S)  # extrapolated, not materialised
    clock.advance(1.25)
    at = machine.set_state("running")
    assert at == clock.now_ns()
    assert machine.state_at(at - 1) == "idle"
    assert machine.state_at(at) == "running"


def test_counter_display_reset_and_integer_rollover() -> None:
    """A 16-bit 0.1 kWh counter wraps at 6,553.6 kWh; a reset restarts it at 0 (pure: the
    same functions fill the registers; the wire is covered by the integration tests)."""
    clock = FakeClock()
    plant = SimulatedPlant(clock)
    meter = plant.add_meter(
        "m",
        "laser-cutter",
        state="running",
        points={"energy": {"register": "holding", "address": 2000, "type": "uint16", "scale": 0.1}},
    )
    assert meter.modulus_kwh() == pytest.approx(6553.6)
    meter.jump_counter_to(6553.55)
    true_before = meter.machine.energy_kwh_now()
    clock.advance(60)  # ~0.37 kWh at ~22 kW
    used = meter.machine.energy_kwh_now() - true_before
    shown = meter.shown_counter_kwh()
    assert shown == pytest.approx(((6553.55 + used) % 6553.6) // 0.1 * 0.1, abs=1e-9)
    assert shown < 1.0
    meter.reset_counter()
    at_reset = meter.machine.energy_kwh_now()
    assert meter.shown_counter_kwh() == 0.0
    clock.advance(30)  # ~0.18 kWh: the register shows whole 0.1 kWh counts
    used = meter.machine.energy_kwh_now() - at_reset
    assert meter.shown_counter_kwh() == pytest.approx(used // 0.1 * 0.1, abs=1e-9)
    assert meter.shown_counter_kwh() == pytest.approx(0.1)


def test_plant_file_spec_builds_meters_with_custom_levels() -> None:
    plant = SimulatedPlant(FakeClock())
    spec = PlantMeterSpec(
        id="oven",
        machine="assembly",
        power_kw={"running": 40.0},
        noise=0.0,
        state="running",
        state_address=1200,
        initial_kwh=55.0,
    )
    meter = add_from_spec(plant, spec)
    assert meter.state_address == 1200
    assert meter.points["state"].address == 1200
    assert meter.machine.power_kw_now() == 40.0
    assert meter.machine.energy_kwh_now() == 55.0
    with pytest.raises(ValueError, match="unknown machine"):
        add_from_spec(plant, PlantMeterSpec(id="x", machine="toaster"))


def test_demo_plant_config_validates(tmp_path: Path) -> None:
    plant = SimulatedPlant(FakeClock())
    build_plant(plant)
    assert plant_spec() == ENCLOSURE_LINE
    assert [step.equipment_id for step in plant_spec()] == [
        "laser-cutter", "press-brake", "welding-robot", "paint-booth", "assembly",
    ]  # fmt: skip
    raw = agent_config(plant, mqtt_host="127.0.0.1", mqtt_port=18830, store_path=tmp_path / "a.db")
    config = parse_config(raw, tmp_path)
    assert {m.id: m.port for m in config.meters} == {  # type: ignore[union-attr]
        step.meter_id: plant.port_of(step.meter_id) for step in ENCLOSURE_LINE
    }
    assert len({plant.port_of(s.meter_id) for s in ENCLOSURE_LINE}) == len(ENCLOSURE_LINE)
    for meter in config.meters:
        points = meter.points  # profile merged: energy from sdm630, state from the PLC register
        assert points["energy"].address == 72  # type: ignore[union-attr]
        assert points["state"].address == STATE_REGISTER  # type: ignore[union-attr]
    assert [e.line for e in config.equipment] == ["enclosure-line"] * 5
    assert config.mqtt.port == 18830
    assert config.emission_factors["electricity"][0].unit == "kgCO2e/kWh"
    assert 0.4 < config.emission_factors["electricity"][0].value < 0.5
    assert load_config(write_config(raw, tmp_path / "plant.yaml")) == config


# -- the MES runner over a real broker ------------------------------------------------------


class Recorder:
    """A subscriber collecting every payload on a topic."""

    def __init__(self, broker: LocalMosquitto, topic: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._subscribed = threading.Event()
        self._client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert self._subscribed.wait(5)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: Any) -> None:
        payload = json.loads(message.payload)
        self._loop.call_soon_threadsafe(self._add, payload)

    def _add(self, payload: dict[str, Any]) -> None:
        self.messages.append(payload)
        self._arrived.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout_s):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


REQUIRED = {
    "start": {"event_id", "type", "ts", "order_id", "lot_id", "equipment_id", "product_id"},
    "stop": {"event_id", "type", "ts", "order_id", "lot_id", "equipment_id",
             "quantity_good", "quantity_scrap"},
    "pause": {"event_id", "type", "ts", "order_id", "lot_id", "equipment_id"},
    "resume": {"event_id", "type", "ts", "order_id", "lot_id", "equipment_id"},
    "lot_complete": {"event_id", "type", "ts", "lot_id"},
}  # fmt: skip
ALLOWED = {
    "event_id", "type", "ts", "order_id", "lot_id", "equipment_id", "product_id",
    "quantity_good", "quantity_scrap", "unit",
}  # fmt: skip


def check_event_shape(event: dict[str, Any]) -> int:
    """DESIGN §5, field by field; returns the event's instant."""
    assert event["type"] in REQUIRED, event
    assert REQUIRED[event["type"]] <= set(event) <= ALLOWED, event
    assert uuid.UUID(event["event_id"]).version == 4
    for key in REQUIRED[event["type"]] - {"quantity_good", "quantity_scrap"}:
        assert isinstance(event[key], str)
        assert event[key]
    for key in ("quantity_good", "quantity_scrap"):
        if key in event:
            assert isinstance(event[key], int)
            assert event[key] >= 0
    assert event.get("unit", "piece") == "piece"
    moment = datetime.fromisoformat(event["ts"])
    assert moment.utcoffset() == timedelta(hours=9)  # the MES's own offset, kept in the text
    assert event["ts"][-6:] == "+09:00"
    return ns_from_datetime(moment)


async def run_mes(
    broker: LocalMosquitto, lots: list[LotPlan], *, concurrent: bool, pause_on: str | None
) -> tuple[list[TrueOrder], list[dict[str, Any]], SimulatedPlant]:
    topic = f"test/{uuid.uuid4().hex[:6]}/mes/orders"
    recorder = Recorder(broker, topic)
    plant = SimulatedPlant(SystemClock())
    steps = ENCLOSURE_LINE[:3]
    build_plant(plant, steps)
    machines = {meter_id: meter.machine for meter_id, meter in plant.meters.items()}
    publisher = MesPublisher(broker.host, broker.port, topic)
    try:
        truth = await run_plan(
            machines,
            publisher,
            lots,
            steps=steps,
            step_s=0.3,
            gap_s=0.05,
            pause_on=pause_on,
            concurrent=concurrent,
        )
        expected = len(publisher.published)
        events = await recorder.wait_for(expected)
    finally:
        publisher.close()
        recorder.close()
    assert len(events) == expected
    return truth, events, plant


async def test_mes_events_follow_the_contract_and_match_the_machines(
    mosquitto: LocalMosquitto,
) -> None:
    lots = [LotPlan("LOT-A", "ENCL-400", 20, scrap=2), LotPlan("LOT-B", "ENCL-400", 10)]
    truth, events, plant = await run_mes(mosquitto, lots, concurrent=True, pause_on="press-brake")
    known = {step.equipment_id for step in ENCLOSURE_LINE}
    assert len({e["event_id"] for e in events}) == len(events)
    for payload in events:
        ts_ns = check_event_shape(payload)
        parsed = parse_event(json.dumps(payload).encode(), known)  # the agent's own validator
        assert parsed.ts_ns == ts_ns
    # 2 lots x 3 steps: start + stop each, pause + resume on the press brake, lot_complete.
    kinds = [e["type"] for e in events]
    assert kinds.count("start") == kinds.count("stop") == 6
    assert kinds.count("pause") == kinds.count("resume") == 2
    assert kinds.count("lot_complete") == 2
    by_order: dict[str, dict[str, int]] = {}
    for payload in events:
        if "order_id" in payload:
            by_order.setdefault(payload["order_id"], {})[payload["type"]] = check_event_shape(
                payload
            )
    assert len(truth) == 6
    for order in truth:
        seen = by_order[order.order_id]
        machine = plant.meters[order.meter_id].machine
        # The event instant IS the state change instant.
        assert seen["start"] == order.start_ns
        assert seen["stop"] == order.stop_ns
        assert machine.state_at(order.start_ns) == "running"
        assert machine.state_at(order.start_ns - 1) == "idle"
        assert machine.state_at(order.stop_ns) == "idle"
        assert machine.state_at(order.stop_ns - 1) == "running"
        if order.equipment_id == "press-brake":
            ((paused, resumed),) = order.pauses
            assert (seen["pause"], seen["resume"]) == (paused, resumed)
            assert machine.state_at(paused) == "idle"
            assert machine.state_at(resumed) == "running"
        occupied = sum(
            machine.energy_kwh_at(b) - machine.energy_kwh_at(a) for a, b in order.occupied
        )
        assert order.true_kwh == occupied > 0
        step = next(s for s in ENCLOSURE_LINE if s.equipment_id == order.equipment_id)
        nominal = step.power_kw["running"]
        running_h = sum(b - a for a, b in order.occupied) / NS_PER_HOUR
        assert nominal * 0.95 * running_h <= order.true_kwh <= nominal * 1.05 * running_h
    stops = {(e["order_id"]): e for e in events if e["type"] == "stop"}
    assert stops["LOT-A-laser-cutter"]["quantity_good"] == 18
    assert stops["LOT-A-laser-cutter"]["quantity_scrap"] == 2
    # Concurrent flow: lot B cuts while lot A bends; never two orders on one machine.
    a_bend = next(o for o in truth if o.order_id == "LOT-A-press-brake")
    b_cut = next(o for o in truth if o.order_id == "LOT-B-laser-cutter")
    assert b_cut.start_ns < a_bend.stop_ns
    assert a_bend.start_ns < b_cut.stop_ns
    for equipment in known:
        spans = sorted((o.start_ns, o.stop_ns) for o in truth if o.equipment_id == equipment)
        assert all(first[1] <= second[0] for first, second in itertools.pairwise(spans))
    await plant.stop()


async def test_mes_sequential_plan_runs_one_lot_after_the_other(
    mosquitto: LocalMosquitto,
) -> None:
    lots = [LotPlan("LOT-1", "P", 3), LotPlan("LOT-2", "P", 4)]
    truth, events, plant = await run_mes(mosquitto, lots, concurrent=False, pause_on=None)
    first_lot_end = max(o.stop_ns for o in truth if o.lot_id == "LOT-1")
    assert all(o.start_ns > first_lot_end for o in truth if o.lot_id == "LOT-2")
    completes = [e for e in events if e["type"] == "lot_complete"]
    assert [e["lot_id"] for e in completes] == ["LOT-1", "LOT-2"]
    assert [e["quantity_good"] for e in completes] == [3, 4]
    # Events of one lot arrive in plan order: start/stop per step, then lot_complete.
    lot1 = [(e["type"], e.get("equipment_id")) for e in events if e["lot_id"] == "LOT-1"]
    assert lot1 == [
        ("start", "laser-cutter"), ("stop", "laser-cutter"),
        ("start", "press-brake"), ("stop", "press-brake"),
        ("start", "welding-robot"), ("stop", "welding-robot"),
        ("lot_complete", None),
    ]  # fmt: skip
    await plant.stop()


async def test_publisher_waits_for_the_broker(tmp_path: Path) -> None:
    """No broker acknowledgement, no return: publish across a broker that starts late."""
    broker = LocalMosquitto(folder=tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    broker.start()
    publisher = MesPublisher(broker.host, broker.port, "t/mes")
    try:
        broker.stop()
        await asyncio.sleep(0.2)
        pending = asyncio.create_task(publisher.publish_raw(b"{}", timeout_s=20))
        await asyncio.sleep(0.5)
        assert not pending.done()
        broker.start()
        await asyncio.wait_for(pending, 15)
    finally:
        publisher.close()
        broker.stop()


def test_mes_command_line_publishes_a_plan(
    mosquitto: LocalMosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    code = mes_main(
        ["--host", mosquitto.host, "--port", str(mosquitto.port), "--topic", "t/mes",
         "--lots", "1", "--step-seconds", "0.05", "--gap-seconds", "0.01", "--sequential"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert out.count(" kWh (simulated machine)") == 5  # one order per step of the line
    assert "11 events published to t/mes" in out  # 5 starts, 5 stops, 1 lot_complete
