"""Product footprints over an ended calendar period (issue 11): every complete lot of the
product at the site, quantity-weighted; re-issued as a new version when a lot changes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.hub.app import Hub
from edge_agent.hub.config import HubConfig, HubSite, HubStoreConfig
from edge_agent.hub.ingest import storage_id
from edge_agent.hub.model import IncomingRecord
from edge_agent.hub.store import open_hub_store
from simulators.modbus_meters import SimulatedPlant
from simulators.plant import agent_config
from tests.unit.footprint_support import SITE, T0, assert_valid_footprint, worked_example

S = 1_000_000_000


def _incoming(record: dict[str, Any], gateway: str = "gw") -> IncomingRecord:
    return IncomingRecord(
        record_id=storage_id(record["record_id"], record["kind"], gateway),
        revision=record["revision"], kind=record["kind"], site_id=SITE,
        lot_id=record.get("lot_id"), order_id=record.get("order_id"), gateway_id=gateway,
        gateway_seq=None, payload=record, received_ns=time.time_ns(),
    )  # fmt: skip


async def test_a_months_lots_make_one_product_footprint(tmp_path: Path) -> None:
    footprint = agent_config(
        SimulatedPlant(), mqtt_host="h", mqtt_port=1, store_path=Path("x"), steps=()
    )["footprint"]
    config = HubConfig(
        sites=[HubSite(id=SITE)],
        store=HubStoreConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"),
        footprint=footprint,
        product_period="month",
    )
    store = await open_hub_store(config.store)
    try:
        hub = Hub(config, store)
        records = []
        for index in range(3):  # three lots in January 2026 (T0 is 2026-01-30 23:00 UTC)
            lot, orders = worked_example(f"LOT-{index}", start=T0 - timedelta(days=index))
            records += [lot, *orders]
        await store.add_records([_incoming(r) for r in records])
        await hub._on_records([_incoming(r) for r in records])
        assert await hub.assemble_pending() == 3  # one footprint per lot
        february = int(datetime(2026, 2, 2, tzinfo=UTC).timestamp()) * S
        assert await hub.product_periods(february) == 1
        row = await store.latest_footprint(f"product:{SITE}:ENCL-400x300:2026-01")
        assert row is not None
        assert_valid_footprint(row.payload, "pact-v3")
        pcf = row.payload["pcf"]
        assert float(pcf["pcfExcludingBiogenicUptake"]) == pytest.approx(1.68 / 20, rel=1e-8)
        assert pcf["referencePeriodStart"].startswith("2026-01-01")
        # Nothing changed: checking again issues nothing; a corrected step re-issues it.
        assert await hub.product_periods(february) == 0
        lot, orders = worked_example("LOT-0", start=T0, revision=2)
        orders[2] = {**orders[2], "revision": 2, "co2e_kg": 0.93}  # welding: 0.83 -> 0.93
        lot["orders"][2]["revision"] = 2
        changed = [_incoming(lot), _incoming(orders[2])]
        await store.add_records(changed)
        await hub._on_records(changed)
        assert await hub.assemble_pending() == 1  # the lot's footprint, version 2
        assert await hub.product_periods(february) == 1
        second = await store.latest_footprint(f"product:{SITE}:ENCL-400x300:2026-01")
        assert second is not None
        assert second.version == 2
        assert second.payload["precedingPfIds"] == [row.id]
        total = 1.68 * 3 + 0.10
        assert float(second.payload["pcf"]["pcfExcludingBiogenicUptake"]) == pytest.approx(
            total / 60, rel=1e-8
        )
        first = await store.footprint(row.id)
        assert first is not None
        assert first.status == "Deprecated"
    finally:
        await store.close()
