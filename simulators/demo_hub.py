"""The demo's plant hub: the real ``edge_agent.hub`` (SQLite, HTTPS with a demo CA, one demo
customer) next to the demo plant, and what a customer would do with it: get a token, fetch a
footprint."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from edge_agent.hub.api import hash_secret
from edge_agent.hub.app import Hub
from edge_agent.hub.config import HubConfig, load_hub_config
from edge_agent.hub.model import FootprintFilter, FootprintRow, HubStore
from edge_agent.hub.store import open_hub_store
from simulators.broker import free_port
from simulators.plant import SITE
from simulators.tls import Pki, make_pki

CLIENT_ID = "demo-customer"


def write_hub_config(
    folder: Path,
    broker_host: str,
    broker_port: int,
    footprint: dict[str, Any],
    *,
    api_host: str = "127.0.0.1",
    api_port: int = 8443,
    store_url: str = "sqlite:///hub.db",
) -> tuple[Path, str]:
    """A hub configuration for the demo plant in ``folder`` (hub.yaml, a demo CA and server
    certificate under tls/, a token key) with one demo customer; returns the file and the
    customer's secret (only its hash is in the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    make_pki(folder / "tls")
    secret = secrets.token_urlsafe(24)
    (folder / "token.key").write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
    raw = {
        "hub_id": "demo-hub",
        "sites": [{"id": SITE, "country": "JP", "topic_prefix": "acme"}],
        "mqtt": {"host": broker_host, "port": broker_port, "client_id": "edge-hub-demo"},
        "store": {"url": store_url},
        "api": {
            "host": api_host,
            "port": api_port,
            "cert_file": "tls/server.pem",
            "key_file": "tls/server-key.pem",
            "token_key_file": "token.key",
            "clients": [
                {
                    "id": CLIENT_ID,
                    "secret_hash": hash_secret(secret),
                    "products": list(footprint.get("products", {})),
                }
            ],
        },
        "footprint": footprint,
        "product_period": "month",
    }
    path = folder / "hub.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    (folder / "demo-customer.txt").write_text(f"{CLIENT_ID}:{secret}\n", encoding="utf-8")
    return path, secret


class DemoHub:
    def __init__(
        self, folder: Path, broker_host: str, broker_port: int, footprint: dict[str, Any]
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.config_path, self.secret = write_hub_config(
            folder, broker_host, broker_port, footprint, api_port=self.port
        )
        self.pki = Pki(
            folder / "tls/ca.pem", folder / "tls/server.pem", folder / "tls/server-key.pem"
        )
        self.config: HubConfig = load_hub_config(self.config_path)
        self.store: HubStore | None = None
        self.hub: Hub | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[int] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def __aenter__(self) -> DemoHub:
        self.store = await open_hub_store(self.config.store)
        self.hub = Hub(self.config, self.store)
        self._task = asyncio.create_task(self.hub.run(self._stop), name="demo-hub")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 20)
        if self.store is not None:
            await self.store.close()

    async def footprints(self) -> list[FootprintRow]:
        assert self.store is not None
        page = await self.store.list_footprints(None, FootprintFilter(status="Active"), 0, 1000)
        return list(page.items)

    async def wait_for_footprints(self, count: int, timeout_s: float) -> list[FootprintRow]:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = [r for r in await self.footprints() if r.key.startswith("lot:")]
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.3)

    async def fetch(self, pf_id: str) -> dict[str, Any]:
        """As the customer would: a token by client credentials, then the footprint."""
        async with httpx.AsyncClient(
            base_url=self.url, verify=self.pki.client_context(), timeout=10
        ) as client:
            token = await client.post(
                "/auth/token",
                data={"grant_type": "client_credentials"},
                auth=(CLIENT_ID, self.secret),
            )
            token.raise_for_status()
            access = token.json()["access_token"]
            response = await client.get(
                f"/3/footprints/{pf_id}", headers={"Authorization": f"Bearer {access}"}
            )
            response.raise_for_status()
            data: dict[str, Any] = response.json()["data"]
            return data

    def curl_lines(self, pf_id: str) -> str:
        ca = self.pki.ca_file
        return (
            f"  .venv/bin/edge-agent hub run -c {self.config_path}   # serve again\n"
            f"  TOKEN=$(curl -s --cacert {ca} -u {CLIENT_ID}:{self.secret} "
            f"-d grant_type=client_credentials {self.url}/auth/token "
            "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
            f'  curl -s --cacert {ca} -H "Authorization: Bearer $TOKEN" '
            f"{self.url}/3/footprints/{pf_id}"
        )
