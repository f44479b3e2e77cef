"""The plant hub end to end (issue 11): two gateways (two agents) behind one Mosquitto, each
running some steps of the same lots, and two hub instances sharing the load through a shared
subscription on one database. One hub instance is killed (SIGKILL) mid-stream and restarted:
no record is lost, and every lot gets one correct footprint, assembled from both gateways."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.hub.config import HubStoreConfig
from edge_agent.hub.model import FootprintFilter
from edge_agent.hub.store import open_hub_store
from simulators.broker import LocalMosquitto
from simulators.demo import PlantHarness
from simulators.mes import LotPlan, run_plan
from simulators.plant import ENCLOSURE_LINE, SITE

REPO = Path(__file__).resolve().parents[2]
LINE_A, LINE_B = ENCLOSURE_LINE[:2], ENCLOSURE_LINE[2:]  # cutting+bending / the rest


class Router:
    """The MES: each order's events to its line's gateway, lot completions to both."""

    def __init__(self, a: PlantHarness, b: PlantHarness) -> None:
        assert a.mes is not None
        assert b.mes is not None
        self._by_equipment = {s.equipment_id: a.mes for s in LINE_A} | {
            s.equipment_id: b.mes for s in LINE_B
        }
        self._all = (a.mes, b.mes)

    async def publish(self, event: dict[str, Any]) -> None:
        target = self._by_equipment.get(str(event.get("equipment_id")))
        for mes in (target,) if target is not None else self._all:
            await mes.publish(event)


def gateway(tmp: Path, broker: LocalMosquitto, name: str, steps: Any) -> PlantHarness:
    harness = PlantHarness(tmp / name, broker.host, broker.port, steps=steps)
    harness.raw_config["mqtt"].update(
        client_id=f"edge-agent-{name}", mes_topic=f"{{prefix}}/{{site}}/mes/{name}"
    )
    harness.reconfigure()
    return harness


def hub_config(tmp: Path, broker: LocalMosquitto, name: str, store_url: str) -> Path:
    plant = yaml.safe_load((tmp / "gw-a" / "plant.yaml").read_text())
    config = {
        "hub_id": "test-hub",
        "sites": [{"id": SITE, "country": "JP", "topic_prefix": "acme"}],
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": name,
                 "share_group": "hubs", "keepalive_s": 5},
        "store": {"url": store_url},
        "footprint": plant["footprint"],
        "product_period": None,
    }  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def hub_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "hub", "run", "-c", str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


async def wait_subscribed(log: Path, client_id: str, timeout_s: float = 30.0) -> None:
    """Until the hub logged its connection (a process starting on a busy machine can take
    seconds), then a moment for its SUBSCRIBE, sent on the CONNACK."""
    for _ in range(int(timeout_s / 0.1)):
        if log.exists() and f"MQTT {client_id} connected" in log.read_text(errors="replace"):
            await asyncio.sleep(0.5)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{client_id} did not connect in {timeout_s:g} s: see {log}")


async def _until(check: Any, timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.2)):
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout_s:g} s")


@pytest.mark.timeout(240)
async def test_two_gateways_two_hubs_one_footprint_per_lot_nothing_lost(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path / 'hub.db'}"
    a = gateway(tmp_path, mosquitto, "gw-a", LINE_A)
    b = gateway(tmp_path, mosquitto, "gw-b", LINE_B)
    configs = [hub_config(tmp_path, mosquitto, f"hub-{n}", store_url) for n in (1, 2)]
    logs = [tmp_path / f"hub-{n}.log" for n in (1, 2)]
    lots = [LotPlan(f"LOT-{n}", "ENCL-400x300", 20, scrap=n % 2) for n in range(4)]
    store = await open_hub_store(HubStoreConfig(url=store_url))
    try:
        with hub_process(configs[0], logs[0]) as first:
            async with a, b:
                machines = {**a.machines, **b.machines}
                with hub_process(configs[1], logs[1]) as second:
                    for n, log in enumerate(logs, 1):
                        await wait_subscribed(log, f"hub-{n}")
                    plan = asyncio.create_task(
                        run_plan(machines, Router(a, b), lots, steps=ENCLOSURE_LINE, step_s=1.5)
                    )
                    await asyncio.sleep(6.0)
                    second.kill()  # mid-stream, no clean shutdown
                    second.wait(5)
                    await asyncio.sleep(3.0)
                with hub_process(configs[1], logs[1]):  # back with its session
                    truth = await plan
                    assert a.consumer is not None
                    assert await a.consumer.wait_for(len(truth), len(lots), timeout_s=30)

                    async def all_footprints() -> bool:
                        page = await store.list_footprints(None, FootprintFilter(), 0, 100)
                        return page.total >= len(lots)

                    await _until(all_footprints, 60, "a footprint per lot")
                    orders = {**a.consumer.latest("order"), **b.consumer.latest("order")}  # type: ignore[union-attr]
            assert first.poll() is None, logs[0].read_text()
        page = await store.list_footprints(None, FootprintFilter(), 0, 100)
        by_lot: dict[str, Any] = {}
        for row in page.items:
            assert row.key.startswith(f"lot:{SITE}:")
            by_lot.setdefault(row.key.rsplit(":", 1)[1], []).append(row)
        assert sorted(by_lot) == [lot.lot_id for lot in lots]
        for lot in lots:
            (row,) = [r for r in by_lot[lot.lot_id] if r.status == "Active"]
            steps = [r for r in orders.values() if r["lot_id"] == lot.lot_id]
            assert {r["equipment_id"] for r in steps} == {s.equipment_id for s in ENCLOSURE_LINE}
            co2e = math.fsum(r["co2e_kg"] for r in steps)
            good = lot.quantity - lot.scrap
            pcf = float(row.payload["pcf"]["pcfExcludingBiogenicUptake"])
            assert pcf == pytest.approx(co2e / good, rel=1e-8)
        # Nothing lost: every order record of both gateways is in the database.
        for lot in lots:
            stored = await store.lot_records(SITE, lot.lot_id)
            kinds = [r["kind"] for r in stored]
            assert kinds.count("order") == len(ENCLOSURE_LINE), kinds
            assert kinds.count("lot") == 2  # one per gateway
        for gateway_id in ("edge-agent-gw-a", "edge-agent-gw-b"):
            progress = await store.gateway_progress(gateway_id)
            assert progress.holes == (), (gateway_id, progress)
    finally:
        await store.close()
    killed_log = logs[1].read_text()
    assert "Traceback" not in logs[0].read_text(), logs[0].read_text()
    print(killed_log[-2000:])
