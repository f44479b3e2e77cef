"""The demo plant: local Mosquitto + simulated meters + MES + the agent, records printed live.

    python -m simulators.demo --duration 60        (./tasks.sh demo runs this)

Leaves its configuration and database in ``demo-output/`` for ``edge-agent lots -c
demo-output/plant.yaml``. The same :class:`PlantHarness` drives the end-to-end tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.app import Agent
from edge_agent.config import AgentConfig, parse_config
from edge_agent.domain import NS_PER_S, iso_from_ns, ns_from_iso
from edge_agent.footprint import build_pact_v3
from edge_agent.publish.topics import mes_topic
from simulators.broker import LocalMosquitto
from simulators.demo_hub import DemoHub
from simulators.mes import LotPlan, MesPublisher, TrueOrder, demo_lots, run_plan
from simulators.modbus_meters import SimulatedPlant
from simulators.opcua_machines import NAMESPACE as OPCUA_NAMESPACE
from simulators.opcua_machines import OpcUaMachineServer
from simulators.plant import ENCLOSURE_LINE, Step, agent_config, build_plant, write_config

# The demo's energy-balance period (the agent's default is an hour).
DEMO_BALANCE_PERIOD_S = 5


class RecordSubscriber:
    """A consumer of lot records (what a plant historian or PCF system would run)."""

    def __init__(self, host: str, port: int, topic: str, *, echo: bool = False) -> None:
        self.records: list[dict[str, Any]] = []
        self.balances: list[dict[str, Any]] = []  # energy-balance records, every revision
        self.statuses: list[dict[str, Any]] = []
        self.received_at: dict[str, float] = {}
        self._echo = echo
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        # A persistent session: records published while this consumer reconnects (after a
        # broker restart) are queued for it, as a real historian would configure it.
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"consumer-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()

    def _on_message(self, _: Any, __: Any, message: paho.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except (ValueError, RecursionError):  # a consumer must survive any payload on its topic
            return
        self._loop.call_soon_threadsafe(self._add, message.topic, body)

    def _add(self, topic: str, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if topic.endswith("/status"):
            self.statuses.append(body)
            return
        if body.get("kind") == "balance":
            self.balances.append(body)
            self._arrived.set()
            return
        if body.get("kind") not in ("order", "lot"):
            return
        self.records.append(body)
        key = f"{body['record_id']}#{body['revision']}"
        self.received_at.setdefault(key, time.time())
        self._arrived.set()
        if self._echo:
            print(format_record(body), flush=True)

    def latest(self, kind: str) -> dict[str, dict[str, Any]]:
        """Newest revision per record id."""
        out: dict[str, dict[str, Any]] = {}
        for record in self.records:
            if record["kind"] == kind:
                current = out.get(record["record_id"])
                if current is None or record["revision"] >= current["revision"]:
                    out[record["record_id"]] = record
        return out

    def latest_balances(self) -> list[dict[str, Any]]:
        """Newest revision of every balance record, by period start."""
        out: dict[str, dict[str, Any]] = {}
        for record in self.balances:
            current = out.get(record["record_id"])
            if current is None or record["revision"] >= current["revision"]:
                out[record["record_id"]] = record
        return sorted(out.values(), key=lambda record: str(record["start"]))

    async def wait_for_balance(self, until_ns: int, timeout_s: float) -> bool:
        """Wait until a balance record whose period ends at or after ``until_ns`` arrives."""
        deadline = time.monotonic() + timeout_s
        while not any(ns_from_iso(b["end"]) >= until_ns for b in self.balances):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return True

    async def wait_for(self, orders: int, lots: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.latest("order")) < orders or len(self.latest("lot")) < lots:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return True

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def format_record(record: dict[str, Any]) -> str:
    per_unit = record.get("co2e_kg_per_unit")
    per_unit_text = f"{per_unit * 1000:8.2f} g/unit" if per_unit is not None else "     n/a     "
    step = record.get("equipment_id") or f"LOT ({record.get('steps')} steps)"
    return (
        f"{record['kind']:<5} {record['lot_id']:<10} {step:<18} "
        f"{record['energy_kwh']:9.4f} kWh {record['co2e_kg']:8.4f} kg CO2e {per_unit_text} "
        f"measured {record['measured_share']:4.0%} primary {record['primary_data_share']:4.0%}"
        + (f" rev {record['revision']}" if record["revision"] > 1 else "")
    )


class PlantHarness:
    """Simulated plant + agent (+ a consumer) on a given broker, in one event loop."""

    def __init__(
        self,
        folder: Path,
        broker_host: str,
        broker_port: int,
        *,
        steps: tuple[Step, ...] = ENCLOSURE_LINE,
        interval_s: float = 1.0,
        echo: bool = False,
        final_timeout_s: float = 10.0,
        opcua_steps: tuple[str, ...] = (),
        power_only_steps: tuple[str, ...] = (),
        balance: dict[str, Any] | None = None,
        base_port: int | None = None,
        opcua_port: int | None = None,
        store_path: Path = Path("edge-agent.db"),  # relative to plant.yaml, as a user writes it
        run_agent: bool = True,
        sections: dict[str, Any] | None = None,
    ) -> None:
        """``base_port``/``opcua_port``: fixed simulator ports (a container's), else free ones.
        ``run_agent=False``: only the plant, the MES and the consumer run here; the agent is
        another process reading ``config_path`` (the compose file's set-up). ``sections``:
        configuration sections set as given (``health``, say)."""
        self.folder = folder
        self.steps = steps
        self.plant = SimulatedPlant(truth_dir=folder / "truth")
        (folder / "truth").mkdir(parents=True, exist_ok=True)
        build_plant(self.plant, steps, base_port=base_port)
        self._run_agent = run_agent
        self.raw_config = agent_config(
            self.plant,
            mqtt_host=broker_host,
            mqtt_port=broker_port,
            store_path=store_path,
            steps=steps,
            interval_s=interval_s,
            final_timeout_s=final_timeout_s,
        )
        for equipment in self.raw_config["equipment"]:
            if equipment["id"] in power_only_steps:  # attribute the power register, not the counter
                equipment["meters"] = [{"meter": equipment["meters"][0], "point": "power"}]
        if balance is not None:  # the `balance` configuration section
            self.raw_config["balance"] = dict(balance)
        self.raw_config.update(sections or {})
        self.opcua: OpcUaMachineServer | None = None
        if opcua_steps:
            self._move_to_opcua(opcua_steps, interval_s, opcua_port)
        self.config_path = write_config(self.raw_config, folder / "plant.yaml")
        self.config: AgentConfig = parse_config(self.raw_config, folder)
        self.agent: Agent | None = None
        self._echo = echo
        self.consumer: RecordSubscriber | None = None
        self.mes: MesPublisher | None = None

    def _move_to_opcua(
        self, equipment_ids: tuple[str, ...], interval_s: float, port: int | None
    ) -> None:
        """Serve these steps' machines from an OPC UA controller instead of a Modbus meter."""
        moved = {step.meter_id: step for step in self.steps if step.equipment_id in equipment_ids}
        machines = {
            step.equipment_id: self.plant.meters[meter].machine for meter, step in moved.items()
        }
        self.opcua = OpcUaMachineServer(machines, port=port, tick_s=0.05)
        states = {0: "off", 1: "idle", 2: "running", 3: "setup", 4: "fault"}
        for index, meter in enumerate(self.raw_config["meters"]):
            step = moved.get(meter["id"])
            if step is None:
                continue
            node = f"nsu={OPCUA_NAMESPACE};s={step.equipment_id}"
            self.raw_config["meters"][index] = {
                "id": meter["id"],
                "protocol": "opcua",
                "endpoint": "machine-controllers",
                "points": {
                    "energy": {"node": f"{node}.EnergyTotal", "unit": "kWh", "role": "energy"},
                    "power": {"node": f"{node}.ActivePower", "unit": "kW", "role": "power"},
                    "state": {"node": f"{node}.State", "role": "state", "states": states},
                },
            }
        self.raw_config["opcua_endpoints"] = [
            {
                "id": "machine-controllers",
                "url": self.opcua.url,
                "mode": "subscribe",
                "interval_s": interval_s,
            }
        ]

    async def __aenter__(self) -> PlantHarness:
        await self.plant.start()
        if self.opcua is not None:
            await self.opcua.start()
        mqtt = self.config.mqtt
        prefix = f"{mqtt.topic_prefix}/{self.config.site.id}"
        self.consumer = RecordSubscriber(mqtt.host, mqtt.port, f"{prefix}/#", echo=self._echo)
        self.mes = MesPublisher(mqtt.host, mqtt.port, mes_topic(self.config))
        if not self._run_agent:
            return self
        await self.start_agent()
        # Production starts once the agent has polled every meter (as on a real floor, where
        # the agent runs long before the first order of the day).
        await asyncio.sleep(1.5 * max(meter.interval_s for meter in self.config.meters))
        return self

    async def start_agent(self) -> Agent:
        self.agent = Agent(self.config)
        await self.agent.start()
        await asyncio.wait_for(self.agent.intake.link.connected.wait(), 10)  # type: ignore[union-attr]
        return self.agent

    async def stop_agent(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
            self.agent = None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_agent()
        if self.mes is not None:
            self.mes.close()
        if self.consumer is not None:
            self.consumer.close()
        if self.opcua is not None:
            await self.opcua.stop()
        await self.plant.stop()

    def add_shared_compressor(self, interval_s: int = 60, key: str = "running_time") -> None:
        """An air compressor on its own Modbus meter, running all along and shared by every
        step (the plant's bill of equipment); call before entering."""
        meter = self.plant.add_meter(
            "m-compressor", "air-compressor", state="running", seed=11, initial_kwh=40.0
        )
        entry = {k: v for k, v in self.raw_config["meters"][0].items() if k != "points"}
        entry.update(id="m-compressor", port=meter.port)
        self.raw_config["meters"].append(entry)
        self.raw_config["shared_equipment"] = [
            {
                "id": "air-compressor",
                "name": "Air compressor (0.7 MPa line)",
                "meters": ["m-compressor"],
                "serves": [step.equipment_id for step in self.steps],
                "key": key,
                "interval_s": interval_s,
                "max_power_kw": 40,
            }
        ]
        self.reconfigure()

    def use_factor_table(self, rows: Sequence[tuple[int, int, float]], **factor: Any) -> Path:
        """Electricity from a time-varying factor table (valid_from_ns, valid_to_ns, kg CO2e
        per kWh), written beside the configuration; call before entering."""
        table = self.folder / "grid-factors.csv"
        table.write_text(
            "valid_from,valid_to,value\n"
            + "".join(f"{iso_from_ns(a)},{iso_from_ns(b)},{value}\n" for a, b, value in rows),
            encoding="utf-8",
        )
        self.raw_config["emission_factors"] = {
            "electricity": {
                "table": table.name,
                "unit": "kgCO2e/kWh",
                "source": "Hourly grid intensity (simulated table)",
                "version": "demo-2026",
                "geography": "JP",
                "reference_year": 2026,
                **factor,
            }
        }
        self.reconfigure()
        return table

    def reconfigure(self) -> None:
        """Parse and write the configuration again after a change to ``raw_config``."""
        self.config = parse_config(self.raw_config, self.folder)
        write_config(self.raw_config, self.config_path)

    @property
    def machines(self) -> dict[str, Any]:
        return {meter_id: meter.machine for meter_id, meter in self.plant.meters.items()}

    async def run_plan(
        self, lots: Sequence[LotPlan], step_s: float, *, pause_on: str | None = None
    ) -> list[TrueOrder]:
        assert self.mes is not None
        return await run_plan(
            self.machines, self.mes, lots, steps=self.steps, step_s=step_s, pause_on=pause_on
        )


def _fresh_output_and_broker(
    output: Path, broker: str | None
) -> tuple[LocalMosquitto | None, str, int]:
    """An empty output folder, and the broker: ``host:port`` given, else a local Mosquitto
    started here (returned, to stop)."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    if broker:
        host, _, port = broker.partition(":")
        return None, host or "127.0.0.1", int(port or 1883)
    local = LocalMosquitto(folder=output / "mosquitto")
    (output / "mosquitto").mkdir()
    local.start()
    return local, local.host, local.port


async def run_demo(duration_s: float, output: Path, broker: str | None) -> int:
    local, host, port_number = _fresh_output_and_broker(output, broker)
    print(f"broker {host}:{port_number}; data in {output}/ ; running {duration_s:g} s")
    step_s = 4.0
    # Short energy-balance periods, so that the run's balance is published while it lasts.
    balance = {"period_s": DEMO_BALANCE_PERIOD_S, "settle_s": 2.0}
    # One lot takes every step (+ a pause in painting); the next lot follows one step behind.
    lot_seconds = len(ENCLOSURE_LINE) * (step_s + 0.3) + step_s / 2
    stagger_s = step_s * 1.5 + 0.5
    lot_count = max(1, int((duration_s - lot_seconds - 5.0) / stagger_s) + 1)
    try:
        # The welding robot reports over OPC UA (its controller), the others over Modbus meters.
        harness = PlantHarness(
            output, host, port_number, echo=True, opcua_steps=("welding-robot",), balance=balance
        )
        hub = DemoHub(output / "hub", host, port_number, harness.raw_config["footprint"])
        async with hub, harness:
            print(
                f"{len(harness.plant.meters)} simulated meters, {lot_count} lots planned; "
                f"plant hub at {hub.url} (PACT API)\n"
            )
            # Production starts with a balance period, so the balances cover all of it.
            period_ns = DEMO_BALANCE_PERIOD_S * NS_PER_S
            await asyncio.sleep((period_ns - time.time_ns() % period_ns) / NS_PER_S)
            run_start_ns = time.time_ns()
            print(
                "kind  lot        step                  energy       CO2e          per unit      quality"
            )
            plan = asyncio.create_task(
                harness.run_plan(demo_lots(lot_count), step_s, pause_on="paint-booth")
            )
            done, _ = await asyncio.wait({plan}, timeout=duration_s)
            if not done:
                print("duration reached: stopping the MES (orders still open stay open)")
                plan.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await plan
            else:
                truth = plan.result()
                assert harness.consumer is not None
                await harness.consumer.wait_for(len(truth), lot_count, timeout_s=15)
                print_truth(truth, harness.consumer.latest("order"))
                last_stop_ns = max((order.stop_ns for order in truth), default=run_start_ns)
                await harness.consumer.wait_for_balance(
                    last_stop_ns, timeout_s=DEMO_BALANCE_PERIOD_S + 10
                )
                _print_balance(harness.consumer.latest_balances(), harness.consumer.latest("order"))
                await _print_hub(hub, lot_count)
    finally:
        if local is not None:
            local.stop()
    print(f"\ninspect: .venv/bin/edge-agent lots -c {output}/plant.yaml")
    return 0


async def _print_hub(hub: DemoHub, lots: int) -> None:
    """What the hub serves, and one footprint fetched as a customer would."""
    rows = await hub.wait_for_footprints(lots, timeout_s=20)
    print(f"\nthe plant hub serves {len(rows)} lot footprint(s) (PACT 3.0):")
    for row in rows:
        pcf = row.payload["pcf"]
        print(
            f"  {row.id}  {row.key.rsplit(':', 1)[1]:<10} {pcf['pcfExcludingBiogenicUptake']} "
            f"kg CO2e per {pcf['declaredUnitOfMeasurement']}"
        )
    if not rows:
        return
    fetched = await hub.fetch(rows[0].id)
    print(
        f"fetched {fetched['id']} over HTTPS with the demo customer's token: "
        f"{fetched['productNameCompany']}, {fetched['pcf']['pcfExcludingBiogenicUptake']} kg CO2e"
    )
    print("fetch it yourself:\n" + hub.curl_lines(rows[0].id))


async def run_worked_example(output: Path, broker: str | None) -> int:
    """DESIGN §1's enclosure lot: five steps, a shared compressor, a factor change mid-lot;
    each step's CO2e, the lot's total and its PACT footprint."""
    local, host, port_number = _fresh_output_and_broker(output, broker)
    step_s = 4.0
    now = time.time_ns()
    change_ns = (now // NS_PER_S + 12) * NS_PER_S  # about the third step
    hour = 3600 * NS_PER_S
    try:
        harness = PlantHarness(
            output, host, port_number, balance={"period_s": DEMO_BALANCE_PERIOD_S, "settle_s": 2.0}
        )
        harness.add_shared_compressor(interval_s=1)
        harness.use_factor_table([(now - hour, change_ns, 0.5), (change_ns, now + hour, 0.3)])
        print(
            "the enclosure lot of DESIGN §1: 5 steps, a compressor shared by running time, "
            f"grid factor 0.5 -> 0.3 kg CO2e/kWh at {iso_from_ns(change_ns)}\n"
        )
        async with harness:
            truth = await harness.run_plan([LotPlan("LOT-ENCL", "ENCL-400x300", 20)], step_s)
            assert harness.consumer is not None
            await harness.consumer.wait_for(len(truth), 1, timeout_s=30)
            orders = harness.consumer.latest("order")
            lots = list(harness.consumer.latest("lot").values())
        print(
            f"{'step':<16}{'direct kWh':>12}{'shared kWh':>12}  factors (kg CO2e/kWh)  {'kg CO2e':>10}"
        )
        for record in sorted(orders.values(), key=lambda r: r["start"]):
            factors = " + ".join(
                f"{f['activity']:.4f}x{f['value']:g}" for f in record["factors"] if f["reported"]
            )
            print(
                f"{record['equipment_id']:<16}{record['energy_direct_kwh']:12.5f}"
                f"{record['energy_shared_kwh']:12.5f}  {factors:<21} {record['co2e_kg']:10.6f}"
            )
        for lot in lots:
            print(
                f"{'lot ' + lot['lot_id']:<16}{lot['energy_direct_kwh']:12.5f}"
                f"{lot['energy_shared_kwh']:12.5f}  {'':<21} {lot['co2e_kg']:10.6f}"
                f"  ({lot['co2e_kg_per_unit'] * 1000:.3f} g per piece of {lot['quantity_good']:g})"
            )
        for lot in lots:
            footprint = build_pact_v3(
                lot,
                [r for r in orders.values() if r["lot_id"] == lot["lot_id"]],
                harness.config.footprint.info(harness.config.site),
                created_at=datetime.now(tz=UTC),
                version=lot["revision"],
            )
            pcf = footprint["pcf"]
            print(
                f"\nPACT 3.0 footprint {footprint['id']}: {pcf['pcfExcludingBiogenicUptake']} "
                f"kg CO2e per {pcf['declaredUnitOfMeasurement']}, primary data "
                f"{pcf.get('primaryDataShare', 'n/a')} %, reference period "
                f"{pcf['referencePeriodStart']} .. {pcf['referencePeriodEnd']}"
            )
    finally:
        if local is not None:
            local.stop()
    print(f"\ninspect: .venv/bin/edge-agent lots -c {output}/plant.yaml")
    print(
        f"footprint: .venv/bin/edge-agent export -c {output}/plant.yaml --format pact-v3 "
        "--lot LOT-ENCL"
    )
    return 0


def print_truth(truth: list[TrueOrder], records: dict[str, dict[str, Any]]) -> None:
    by_order = {r["order_id"]: r for r in records.values()}
    errors: list[tuple[float, str]] = []
    for order in truth:
        record = by_order.get(order.order_id)
        if record is not None and order.true_kwh > 0:
            error = abs(record["energy_kwh"] - order.true_kwh) / order.true_kwh
            errors.append((error, order.order_id))
    if errors:
        errors.sort()
        worst, worst_order = errors[-1]
        print(
            f"\n{len(errors)} order records vs the simulator's ground truth: "
            f"median error {errors[len(errors) // 2][0]:.3%}, worst {worst:.3%} ({worst_order})"
        )


def _print_balance(
    balances: list[dict[str, Any]], order_records: dict[str, dict[str, Any]]
) -> None:
    """The site's energy over the run: metered = to orders + idle (+ unallocated), from the
    balance records, and the orders' part next to the sum of their order records."""
    if not balances:
        print("\nno energy-balance record arrived")
        return
    metered = math.fsum(b["metered_kwh"] for b in balances)
    orders = math.fsum(b["to_orders_kwh"] for b in balances)
    idle = math.fsum(b["idle_kwh"] for b in balances)
    unallocated = math.fsum(b["unallocated_kwh"] for b in balances)
    revised = sum(1 for b in balances if b["revision"] > 1)
    in_balances = {e["order_id"] for b in balances for e in b["orders"]}
    records = math.fsum(
        r["energy_kwh"] for r in order_records.values() if r["order_id"] in in_balances
    )
    print(
        f"\nsite energy balance {balances[0]['start']} .. {balances[-1]['end']} "
        f"({len(balances)} records of {balances[0]['period_s']:g} s"
        + (f", {revised} revised" if revised else "")
        + f"):\n  metered {metered:.4f} kWh = orders {orders:.4f} + idle {idle:.4f}"
        + (f" + unallocated {unallocated:.4f}" if unallocated else "")
        + f" kWh (difference {metered - orders - idle - unallocated:+.1e})"
        + f"\n  the orders' part vs their order records: {orders:.4f} vs {records:.4f} kWh "
        f"(difference {orders - records:+.1e})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the edge-agent demo plant")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--output", default="demo-output", help="folder for config and database")
    parser.add_argument("--broker", default=None, help="host:port of an existing broker")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--worked-example",
        action="store_true",
        help="one enclosure lot with a shared compressor and a factor change (docs/carbon.md)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # asyncua warns about every unencrypted session; the demo's controller is on loopback.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        if args.worked_example:
            return asyncio.run(run_worked_example(Path(args.output), args.broker))
        return asyncio.run(run_demo(args.duration, Path(args.output), args.broker))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
