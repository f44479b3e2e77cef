"""The hub's lifecycle: ingest, assembly, product periods, re-sync and the API in one process.

Start-up: the store is opened (its problems exit 2), holes in a gateway's record sequence are
asked for again (re-sync), then records flow: ingest commits them, the assembler turns every
lot they touch into a footprint once it is complete, ended product periods get their product
footprints, and the API serves them. A task that dies takes the process down with status 1
(the service manager restarts it) — never a hub that looks alive and ingests nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from edge_agent.domain import NS_PER_S
from edge_agent.hub.assemble import Assembler, period_of
from edge_agent.hub.config import HubConfig
from edge_agent.hub.ingest import RecordIngest
from edge_agent.hub.model import FootprintRow, HubStore, IncomingRecord

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
PERIOD_CHECK_S = 60.0


class Hub:
    def __init__(self, config: HubConfig, store: HubStore) -> None:
        self.config = config
        self.store = store
        self.assembler = Assembler(config, store)
        self.ingest = RecordIngest(config, store, self._on_records)
        self._lots: dict[tuple[str, str], None] = {}  # lots to look at, in arrival order
        self._wake = asyncio.Event()
        # (site, product, period start) whose ended period needs its product footprint
        self._periods: set[tuple[str, str, datetime]] = set()
        self._last_ended: datetime | None = None  # the last ended period already looked at
        self.resync_requests = 0
        self.api: Any = None  # the running API's HubApi (PublishedEvent notifications)
        self._holes: dict[str, tuple[int, int]] = {}  # gateway -> first hole at the last look

    async def _on_records(self, records: Sequence[IncomingRecord]) -> None:
        for record in records:
            if record.kind in ("order", "lot") and record.lot_id:
                self._lots[(record.site_id, record.lot_id)] = None
        self._wake.set()

    async def assemble_pending(self) -> int:
        """Every lot touched since the last call; returns the footprints issued."""
        issued = 0
        while self._lots:
            site_id, lot_id = next(iter(self._lots))
            del self._lots[(site_id, lot_id)]
            row = await self.assembler.lot(site_id, lot_id, time.time_ns())
            if row is None:
                continue
            issued += 1
            self._announce(row)
            period = self.config.product_period
            if period is not None:
                start, _ = period_of(row.validity_start_ns, period)
                self._periods.add((site_id, row.product_id, start))
        return issued

    async def product_periods(self, now_ns: int) -> int:
        """Product footprints of the periods that have ended (the last one of every product
        the configuration names, and any an issued lot footprint touched)."""
        period = self.config.product_period
        if period is None:
            return 0
        previous_start, _ = period_of(now_ns, period)
        last_ended, _ = period_of(int(previous_start.timestamp()) * NS_PER_S - 1, period)
        if last_ended != self._last_ended:
            # Once per period (and at start-up): later changes come as touched periods.
            self._last_ended = last_ended
            for site in self.config.sites:
                for product_id in self.config.footprint.products:
                    self._periods.add((site.id, product_id, last_ended))
        issued = 0
        for site_id, product_id, start in sorted(self._periods):
            _, end = period_of(int(start.timestamp()) * NS_PER_S, period)
            if end.timestamp() * NS_PER_S > now_ns:
                continue  # not ended yet
            self._periods.discard((site_id, product_id, start))
            row = await self.assembler.product_period(site_id, product_id, start, end, now_ns)
            if row is not None:
                issued += 1
                self._announce(row)
        return issued

    def _announce(self, row: FootprintRow) -> None:
        """A PublishedEvent to every customer with an events endpoint who may see it."""
        if self.api is not None:
            self.api.notify_published([row])

    async def request_resync(self, *, persisting_only: bool = False) -> int:
        """Ask every gateway with holes in its record sequence to publish them again;
        ``persisting_only``: only holes already there at the previous look (a record another
        instance has not committed yet is no hole)."""
        asked = 0
        seen, self._holes = self._holes, {}
        for gateway in await self.store.gateways():
            progress = await self.store.gateway_progress(gateway)
            if not progress.holes:
                continue
            self._holes[gateway] = progress.holes[0]
            if persisting_only and seen.get(gateway) != progress.holes[0]:
                continue
            first = progress.holes[0][0]
            missing = sum(b - a + 1 for a, b in progress.holes)
            log.warning(
                "gateway %s: %d records missing (first seq %d): asking for a re-sync",
                gateway, missing, first,
            )  # fmt: skip
            body = {
                "gateway": gateway,
                "from_seq": first,
                "requester": self.config.mqtt.client_id,
                "request_id": str(uuid.uuid4()),
            }
            for site in self.config.sites:
                await self.ingest.link.publish(site.resync(), json.dumps(body).encode(), qos=1)
            asked += 1
        self.resync_requests += asked
        return asked

    async def _assemble_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.assemble_pending()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_check_s)
            await self.request_resync(persisting_only=True)

    async def _period_loop(self) -> None:
        while True:
            await self.product_periods(time.time_ns())
            await asyncio.sleep(PERIOD_CHECK_S)

    async def run(self, stop: asyncio.Event) -> int:
        """Until ``stop`` is set (0) or a task fails (1)."""
        await self.ingest.start()
        tasks = [
            asyncio.create_task(self.ingest.run(), name="ingest"),
            asyncio.create_task(self._assemble_loop(), name="assembler"),
            asyncio.create_task(self._period_loop(), name="product-periods"),
            asyncio.create_task(self._resync_loop(), name="resync-check"),
        ]
        server = None
        if self.config.api.cert_file is not None:
            from edge_agent.hub.api import create_app, serve  # noqa: PLC0415 (FastAPI is heavy)

            key_file = self.config.api.token_key_file
            token_key = key_file.read_bytes().strip() if key_file is not None else None
            endpoints, credentials = recipients(self.config)
            app = create_app(
                self.config.api,
                self.store,
                token_key=token_key,
                recipient_endpoints=endpoints,
                recipient_credentials=credentials,
                public_url=self.config.api.public_url,
            )
            self.api = app.state.hub_api
            server = asyncio.create_task(serve(app, self.config.api), name="api")
            tasks.append(server)
        try:
            async with asyncio.timeout(30):
                await self.ingest.link.connected.wait()
            # What the broker queued for this instance's session first: those are no holes.
            await self.ingest.settled(quiet_s=2.0, timeout_s=60.0)
            await self.request_resync()
        except TimeoutError:
            log.warning(
                "broker %s:%d not reachable after 30 s: re-sync check deferred (ingest keeps "
                "trying)", self.config.mqtt.host, self.config.mqtt.port,
            )  # fmt: skip
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        status = EXIT_OK
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                log.error("hub stopping: task %s failed: %r", task.get_name(), task.exception())
                status = EXIT_FAILED
        for task in [*tasks, stopper]:
            task.cancel()
        for task in [*tasks, stopper]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.ingest.stop()
        return status


def recipients(config: HubConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Per client, its events URL; per recipient origin, the credentials to use there."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    from edge_agent.config import read_secret  # noqa: PLC0415
    from edge_agent.hub.api.events import RecipientCredentials  # noqa: PLC0415

    endpoints: dict[str, str] = {}
    credentials: dict[str, Any] = {}
    for index, client in enumerate(config.api.clients):
        if client.events_url is None:
            continue
        endpoints[client.id] = client.events_url
        given = client.events_credentials
        if given is not None:
            secret = read_secret(given, f"api.clients[{index}].events_credentials") or ""
            parts = urlsplit(client.events_url)
            credentials[f"{parts.scheme}://{parts.netloc}"] = RecipientCredentials(
                given.client_id, secret
            )
    return endpoints, credentials


async def run_hub(config: HubConfig) -> int:
    from edge_agent.hub.store import open_hub_store  # noqa: PLC0415

    store = await open_hub_store(config.store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        log.info(
            "hub %s: %d site(s), store %s, API %s",
            config.hub_id,
            len(config.sites),
            config.store.url.split("@")[-1],
            f"https://{config.api.host}:{config.api.port}" if config.api.cert_file else "off",
        )
        return await Hub(config, store).run(stop)
    finally:
        await store.close()
