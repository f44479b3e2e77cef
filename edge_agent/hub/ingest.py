"""Records from every gateway of the configured sites, through the broker, into the store.

One MQTT 5 *shared subscription* per site (``$share/<group>/<prefix>/<site>/#``): hub
instances of the same group split the records between them, and each instance has a persistent
session (``clean_start`` false, a session expiry), so the broker queues what arrives while it
is away. A message is acknowledged (PUBACK) only after the record is committed: an instance
killed between the two gets it again (from its session, or the broker re-sends it to another
member, depending on the broker — docs/hub.md).

Messages on the sites' topics that are no records (MES events, status, dead letters) are
acknowledged and skipped. A malformed record is logged with what is wrong, counted and
acknowledged: it cannot become valid by being delivered again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from edge_agent.hub.config import HubConfig
from edge_agent.hub.model import HubStore, IncomingRecord
from edge_agent.publish.link import MqttLink, Received

log = logging.getLogger(__name__)

RECORD_KINDS = ("order", "lot", "balance")
BATCH_MAX = 200
BATCH_WAIT_S = 0.05

OnRecords = Callable[[Sequence[IncomingRecord]], Awaitable[None]]


class NotARecord(ValueError):
    """A message that is not a record (skipped quietly)."""


def subscriptions(config: HubConfig) -> list[tuple[str, int]]:
    group = config.mqtt.share_group
    return [(f"$share/{group}/{site.topic_prefix}/{site.id}/#", 1) for site in config.sites]


def storage_id(record_id: str, kind: str, gateway_id: str) -> str:
    """The store's identity of a record: a lot record is made by every gateway that ran steps
    of the lot under the same record id (its identity is the lot's), so the hub keeps one per
    gateway; order and balance records are the gateway's own."""
    return f"{record_id}@{gateway_id}" if kind == "lot" else record_id


def parse_record(message: Received, sites: set[str], received_ns: int) -> IncomingRecord:
    """A record, or NotARecord for other messages, or ValueError naming what is wrong."""
    try:
        body: Any = json.loads(message.payload)
    except ValueError:
        if message.user_properties.get("kind") in RECORD_KINDS:
            raise ValueError("payload is not JSON") from None
        raise NotARecord("not JSON") from None
    if not isinstance(body, dict) or body.get("kind") not in RECORD_KINDS:
        raise NotARecord("no record kind")
    record_id, revision, site_id = body.get("record_id"), body.get("revision"), body.get("site_id")
    if not isinstance(record_id, str) or not record_id:
        raise ValueError(f"record_id: {record_id!r} is not a non-empty string")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise ValueError(f"revision: {revision!r} is not an integer >= 1")
    if site_id not in sites:
        raise ValueError(
            f"site_id: {site_id!r} is not a configured site ({', '.join(sorted(sites))})"
        )
    kind = str(body["kind"])
    lot_id = body.get("lot_id")
    if kind != "balance" and (not isinstance(lot_id, str) or not lot_id):
        raise ValueError(f"lot_id: {lot_id!r} is not a non-empty string")
    gateway = message.user_properties.get("gateway") or "unknown"
    seq_text = message.user_properties.get("seq")
    seq = int(seq_text) if seq_text and seq_text.isdigit() else None
    return IncomingRecord(
        record_id=storage_id(record_id, kind, gateway),
        revision=revision,
        kind=kind,
        site_id=str(site_id),
        lot_id=lot_id if isinstance(lot_id, str) else None,
        order_id=body.get("order_id") if isinstance(body.get("order_id"), str) else None,
        gateway_id=gateway,
        gateway_seq=seq,
        payload=body,
        received_ns=received_ns,
    )


class RecordIngest:
    def __init__(self, config: HubConfig, store: HubStore, on_records: OnRecords) -> None:
        self._config = config
        self._store = store
        self._on_records = on_records
        self._sites = {site.id for site in config.sites}
        self.link = MqttLink(
            config,
            config.mqtt.client_id,
            persistent_session=True,
            manual_ack=True,
            subscriptions=subscriptions(config),
            receive_maximum=config.mqtt.receive_maximum,
        )
        self.last_message_s = time.monotonic()  # when the last message arrived
        self.stored = 0  # new (record, revision) rows
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()

    async def start(self) -> None:
        await self.link.start()

    async def stop(self) -> None:
        await self.link.stop()

    async def settled(self, quiet_s: float, timeout_s: float) -> None:
        """Until no message arrived for ``quiet_s`` (a persistent session's queue delivered),
        at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_message_s >= quiet_s and self.link.messages.empty():
                return
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        while True:
            batch = [await self.link.messages.get()]
            self.last_message_s = time.monotonic()
            deadline = time.monotonic() + BATCH_WAIT_S
            while len(batch) < BATCH_MAX:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.link.messages.get(), remaining))
                except TimeoutError:
                    break
            await self._handle(batch)

    async def _handle(self, batch: Sequence[Received]) -> None:
        records: list[IncomingRecord] = []
        now_ns = time.time_ns()
        for message in batch:
            try:
                records.append(parse_record(message, self._sites, now_ns))
            except NotARecord:
                continue
            except ValueError as exc:
                reason = str(exc).split(":", 1)[0]
                if not self.rejected[reason]:
                    log.warning("record on %s rejected: %s", message.topic, exc)
                self.rejected[reason] += 1
        if records:
            # Committed before any acknowledgement; a failure here leaves the batch unacked
            # and stops the ingest loudly (the service manager restarts the hub).
            new = await self._store.add_records(records)
            self.stored += sum(new)
            self.duplicates += len(new) - sum(new)
            fresh = [record for record, is_new in zip(records, new, strict=True) if is_new]
        else:
            fresh = []
        for message in batch:
            self.link.ack(message)
        if fresh:
            await self._on_records(fresh)
