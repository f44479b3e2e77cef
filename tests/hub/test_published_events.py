"""A new footprint is announced to the customers who may see it (issue 11): the hub sends a
PACT PublishedEvent to each customer's events endpoint (authenticating there with the
credentials the customer gave it), and never to a customer whose products it is not."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge_agent.hub.app import Hub
from edge_agent.hub.config import (
    ApiClient,
    EventsCredentials,
    HubApiConfig,
    HubConfig,
    HubMqttConfig,
    HubSite,
    HubStoreConfig,
)
from edge_agent.hub.store import open_hub_store
from simulators.broker import LocalMosquitto, free_port
from simulators.tls import Pki
from tests.hub.api_support import (
    RECIPIENT_CLIENT_ID,
    RECIPIENT_SECRET,
    Recipient,
    running_recipient,
    secret_hash,
)
from tests.hub.test_hub_cli import _footprint
from tests.hub.test_product_periods import _incoming
from tests.unit.footprint_support import SITE, worked_example


async def test_a_new_footprint_is_announced_to_its_customers_only(
    mosquitto: LocalMosquitto, tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECIPIENT_SECRET_FOR_TEST", RECIPIENT_SECRET)
    async with running_recipient(pki, Recipient()) as recipient:
        events = f"{recipient.base_url}/3/events"
        credentials = EventsCredentials(
            client_id=RECIPIENT_CLIENT_ID, password_env="RECIPIENT_SECRET_FOR_TEST"
        )
        config = HubConfig(
            sites=[HubSite(id=SITE)],
            mqtt=HubMqttConfig(host=mosquitto.host, port=mosquitto.port, client_id="hub-ev"),
            store=HubStoreConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"),
            api=HubApiConfig(
                port=free_port(), cert_file=pki.cert_file, key_file=pki.key_file,
                public_url="https://hub.plant.example:8443",
                clients=[
                    ApiClient(id="customer-a", secret_hash=secret_hash("a" * 20),
                              products=["ENCL-400x300"], events_url=events,
                              events_credentials=credentials),
                    ApiClient(id="customer-b", secret_hash=secret_hash("b" * 20),
                              products=["OTHER"], events_url=events,
                              events_credentials=credentials),
                ],
            ),
            footprint=_footprint(),
            product_period=None,
        )  # fmt: skip
        store = await open_hub_store(config.store)
        stop = asyncio.Event()
        hub = Hub(config, store)
        # The recipient's certificate is from the test CA: the hub's event sender (httpx) trusts
        # the CA named by SSL_CERT_FILE, as an operator would set it for a private CA.
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
        task = asyncio.create_task(hub.run(stop))
        try:
            for _ in range(100):
                if hub.api is not None:
                    break
                await asyncio.sleep(0.05)
            assert hub.api is not None
            lot, orders = worked_example("LOT-EV")
            records = [_incoming(r) for r in (lot, *orders)]
            await store.add_records(records)
            await hub._on_records(records)
            start = time.monotonic()
            (event,) = await recipient.wait_for(1, within_s=20)
            row = await store.latest_footprint(f"lot:{SITE}:LOT-EV")
            assert row is not None
            assert event["type"] == "org.wbcsd.pact.ProductFootprint.PublishedEvent.3"
            assert event["data"]["pfIds"] == [row.id]
            assert event["source"] == "//hub.plant.example:8443/3/events"  # PACT's form
            assert time.monotonic() - start < 20
            await asyncio.sleep(0.5)
            assert len(recipient.events) == 1  # customer-b may not see it: nothing for it
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await store.close()
