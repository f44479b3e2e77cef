"""A hub restored from an old backup is rebuilt from the gateway (issue 11): it sees a hole in
the gateway's record sequence once a new record arrives, asks for a re-sync, and the gateway
publishes what the hub lost; every lot gets its footprint back."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import yaml

from edge_agent.hub.config import HubStoreConfig
from edge_agent.hub.model import FootprintFilter
from edge_agent.hub.store import open_hub_store
from simulators.broker import LocalMosquitto
from simulators.demo import PlantHarness
from simulators.mes import LotPlan
from simulators.plant import ENCLOSURE_LINE, SITE
from tests.hub.test_two_gateways_two_hubs import hub_process

STEPS = ENCLOSURE_LINE[:2]


def _config(tmp: Path, broker: LocalMosquitto, client_id: str, footprint: object) -> Path:
    config = {
        "sites": [{"id": SITE, "topic_prefix": "acme"}],
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id,
                 "keepalive_s": 5},
        "store": {"url": f"sqlite:///{tmp / 'hub.db'}"},
        "footprint": footprint,
        "product_period": None,
        "resync_check_s": 1,
    }  # fmt: skip
    path = tmp / f"{client_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _lot_footprints(tmp: Path) -> set[str]:
    store = await open_hub_store(HubStoreConfig(url=f"sqlite:///{tmp / 'hub.db'}"))
    try:
        page = await store.list_footprints(None, FootprintFilter(status="Active"), 0, 100)
        return {row.key.rsplit(":", 1)[1] for row in page.items}
    finally:
        await store.close()


async def _hub_subscribed(log: Path, started_before: int) -> None:
    """Wait until the hub just started has connected (and subscribed in the same step): a
    fixed sleep lost LOT-A when the hub's start-up took longer on a busy machine — records
    published before a new session's first subscription never reach it."""
    for _ in range(150):
        if _connections(log) > started_before:
            await asyncio.sleep(0.3)
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the hub did not connect in 30 s:\n{log.read_text()}")


def _connections(log: Path) -> int:
    return log.read_text().count(" connected to ") if log.exists() else 0


async def _until_footprints(tmp: Path, wanted: set[str], timeout_s: float) -> set[str]:
    for _ in range(int(timeout_s / 0.5)):
        found = await _lot_footprints(tmp)
        if wanted <= found:
            return found
        await asyncio.sleep(0.5)
    return await _lot_footprints(tmp)


@pytest.mark.timeout(240)
async def test_a_hub_restored_from_an_old_backup_is_rebuilt_from_the_gateway(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    harness = PlantHarness(tmp_path / "gw", mosquitto.host, mosquitto.port, steps=STEPS)
    footprint = harness.raw_config["footprint"]
    first = _config(tmp_path, mosquitto, "hub-1", footprint)
    restored = _config(tmp_path, mosquitto, "hub-restored", footprint)
    log = tmp_path / "hub.log"
    async with harness:
        with hub_process(first, log):
            await _hub_subscribed(log, _connections(log))
            await harness.run_plan([LotPlan("LOT-A", "ENCL-400x300", 10)], step_s=1.0)
            assert await _until_footprints(tmp_path, {"LOT-A"}, 30) >= {"LOT-A"}, log.read_text()
        backup = tmp_path / "backup.db"
        shutil.copy(tmp_path / "hub.db", backup)  # the hub is stopped: the file is complete
        with hub_process(first, log):
            await _hub_subscribed(log, _connections(log))
            lots = [LotPlan("LOT-B", "ENCL-400x300", 10), LotPlan("LOT-C", "ENCL-400x300", 10)]
            await harness.run_plan(lots, step_s=1.0)
            found = await _until_footprints(tmp_path, {"LOT-A", "LOT-B", "LOT-C"}, 30)
            assert found == {"LOT-A", "LOT-B", "LOT-C"}, log.read_text()
        # The database is lost and restored from the backup made after LOT-A.
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"hub.db{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, tmp_path / "hub.db")
        assert await _lot_footprints(tmp_path) == {"LOT-A"}
        with hub_process(restored, log):  # a new session: the broker has nothing queued for it
            await _hub_subscribed(log, _connections(log))
            await harness.run_plan([LotPlan("LOT-D", "ENCL-400x300", 10)], step_s=1.0)
            found = await _until_footprints(tmp_path, {"LOT-A", "LOT-B", "LOT-C", "LOT-D"}, 60)
        gateway = harness.config.client_id
    text = log.read_text()
    assert found == {"LOT-A", "LOT-B", "LOT-C", "LOT-D"}, text
    assert f"gateway {gateway}:" in text
    assert "asking for a re-sync" in text
    store = await open_hub_store(HubStoreConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"))
    try:
        assert (await store.gateway_progress(gateway)).holes == ()
    finally:
        await store.close()
