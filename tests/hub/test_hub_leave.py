"""Decommissioning a hub instance (issue 11): with Mosquitto, a stopped instance's persistent
session keeps its place in the shared subscription and is handed its share of the records until
the session expires (docs/hub.md); `edge-agent hub leave` ends the session, and from then on the
remaining instance receives every record."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.hub.config import HubStoreConfig
from edge_agent.hub.store import open_hub_store
from simulators.broker import LocalMosquitto
from simulators.plant import SITE
from tests.hub.test_hub_cli import _footprint
from tests.hub.test_two_gateways_two_hubs import REPO, hub_process, wait_subscribed
from tests.unit.footprint_support import order_record


def _config(tmp: Path, broker: LocalMosquitto, name: str) -> Path:
    config = {
        "sites": [{"id": SITE, "topic_prefix": "acme"}],
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": name,
                 "share_group": "hubs", "keepalive_s": 5},
        "store": {"url": f"sqlite:///{tmp / 'hub.db'}"},
        "footprint": _footprint(),
        "product_period": None,
    }  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _publish(broker: LocalMosquitto, count: int) -> list[str]:
    """``count`` order records of new lots, as a gateway publishes them; their lot ids."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"gw-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.connect(broker.host, broker.port)
    client.loop_start()
    lots = [f"L-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for lot in lots:
        record = order_record("laser-cutter", 0.2, lot_id=lot)
        info = client.publish(f"acme/{SITE}/line/laser/lots/{lot}", json.dumps(record), qos=1)
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    return lots


async def _stored(tmp: Path, lots: list[str], timeout_s: float) -> int:
    """How many of these lots' records the hub stored (waiting up to ``timeout_s`` for all)."""
    store = await open_hub_store(HubStoreConfig(url=f"sqlite:///{tmp / 'hub.db'}"))
    try:
        found = 0
        for _ in range(int(timeout_s / 0.25)):
            found = sum([1 for lot in lots if await store.lot_records(SITE, lot)])
            if found == len(lots):
                break
            await asyncio.sleep(0.25)
        return found
    finally:
        await store.close()


async def test_a_left_instance_gets_no_share_of_the_records(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    one, two = (_config(tmp_path, mosquitto, f"hub-{n}") for n in (1, 2))
    with hub_process(one, tmp_path / "hub-1.log"):
        with hub_process(two, tmp_path / "hub-2.log"):
            for name in ("hub-1", "hub-2"):
                await wait_subscribed(tmp_path / f"{name}.log", name)
        # hub-2 stopped cleanly: its session (and its place in the group) stays.
        lots = await asyncio.to_thread(_publish, mosquitto, 20)
        assert await _stored(tmp_path, lots, timeout_s=4) < len(lots), (
            "Mosquitto queued nothing for the stopped instance's session"
        )
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "edge_agent.cli", "hub", "leave", "-c", str(two)],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lots = await asyncio.to_thread(_publish, mosquitto, 20)
        assert await _stored(tmp_path, lots, timeout_s=15) == len(lots)
