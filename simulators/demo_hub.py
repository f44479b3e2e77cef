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
from simulators.tls import make_pki

CLIENT_ID = "demo-customer"


class DemoHub:
    def __init__(
        self, folder: Path, broker_host: str, broker_port: int, footprint: dict[str, Any]
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.pki = make_pki(folder / "tls")
        self.secret = secrets.token_urlsafe(24)
        (folder / "token.key").write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        self.port = free_port()
        raw = {
            "hub_id": "demo-hub",
            "sites": [{"id": SITE, "country": "JP", "topic_prefix": "acme"}],
            "mqtt": {"host": broker_host, "port": broker_port, "client_id": "edge-hub-demo"},
            "store": {"url": "sqlite:///hub.db"},
            "api": {
                "port": self.port,
                "cert_file": "tls/server.pem",
                "key_file": "tls/server-key.pem",
                "token_key_file": "token.key",
                "clients": [
                    {
                        "id": CLIENT_ID,
                        "secret_hash": hash_secret(self.secret),
                        "products": list(footprint.get("products", {})),
                    }
                ],
            },
            "footprint": footprint,
            "product_period": "month",
        }
        self.config_path = folder / "hub.yaml"
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
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
