"""Typed values of the hub and the store interface (the parts code against these only).

Records arrive as the agents publish them (docs/contracts.md); footprints are PACT 3.0
ProductFootprints built by :mod:`edge_agent.footprint`. Times are epoch nanoseconds (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FootprintStatus = Literal["Active", "Deprecated"]


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    """One record as received from a gateway (any revision; a re-send is the same row)."""

    record_id: str
    revision: int
    kind: str  # order, lot, balance
    site_id: str
    lot_id: str | None  # None for balance records
    order_id: str | None
    gateway_id: str  # the agent's MQTT client id (the publisher)
    gateway_seq: int | None  # the agent's outbox sequence number (MQTT 5 user property "seq")
    payload: Mapping[str, Any]
    received_ns: int


@dataclass(frozen=True, slots=True)
class FootprintRow:
    """One version of a footprint, with the columns the API filters on."""

    id: str  # PACT PfId (UUID)
    key: str  # what it is a footprint of: "lot:<site>:<lot>" or "product:<product>:<period>"
    version: int  # 1, 2, … for the same key
    status: FootprintStatus  # an older version is Deprecated when a newer one is stored
    product_id: str  # the MES product id (data sovereignty: which clients see it)
    product_ids: tuple[str, ...]  # PACT productIds (URNs)
    company_ids: tuple[str, ...]
    classifications: tuple[str, ...]
    geography: tuple[str, ...]  # region, country and subdivision the footprint names
    validity_start_ns: int  # PACT validityPeriodStart (or referencePeriodEnd when absent)
    validity_end_ns: int
    created_ns: int
    preceding_ids: tuple[str, ...]
    payload: Mapping[str, Any]  # the ProductFootprint as served


@dataclass(frozen=True, slots=True)
class FootprintFilter:
    """GET /3/footprints filters (PACT 3.0 rest-api.md); empty tuples and None match all.
    Several values of one filter match any of them; different filters must all match."""

    product_ids: tuple[str, ...] = ()
    company_ids: tuple[str, ...] = ()
    geography: tuple[str, ...] = ()
    classifications: tuple[str, ...] = ()
    valid_on_ns: int | None = None  # validity_start <= t <= validity_end
    valid_after_ns: int | None = None  # t < validity_start
    valid_before_ns: int | None = None  # t > validity_end
    status: FootprintStatus | None = None


@dataclass(frozen=True, slots=True)
class FootprintPage:
    items: Sequence[FootprintRow]
    total: int  # matching footprints in all pages


@dataclass(frozen=True, slots=True)
class GatewayProgress:
    """What the hub holds of one gateway's record sequence."""

    gateway_id: str
    highest_seq: int | None
    holes: tuple[tuple[int, int], ...] = field(default_factory=tuple)  # missing [first, last]


class HubStore(Protocol):
    """The hub's database. Every method is one transaction; implementations: SQLite and
    PostgreSQL behind one data-access layer (edge_agent.hub.store)."""

    async def add_records(self, records: Sequence[IncomingRecord]) -> list[bool]:
        """Store every revision idempotently by (record_id, revision); True for each row that
        was new. Commits before returning (the caller acknowledges to the broker after)."""
        ...

    async def lot_records(self, site_id: str, lot_id: str) -> list[Mapping[str, Any]]:
        """The highest revision of every order and lot record of the lot (payloads)."""
        ...

    async def lots_of_product(
        self, product_id: str, start_ns: int, end_ns: int
    ) -> list[tuple[str, str]]:
        """(site, lot) of the lots of a product whose lot record ends in [start, end)."""
        ...

    async def gateway_progress(self, gateway_id: str) -> GatewayProgress: ...

    async def gateways(self) -> list[str]: ...

    async def save_footprint(self, row: FootprintRow) -> bool:
        """Store a footprint version; earlier versions of its key become Deprecated. False
        when this (key, version) is already stored (idempotent)."""
        ...

    async def latest_footprint(self, key: str) -> FootprintRow | None: ...

    async def footprint(self, pf_id: str) -> FootprintRow | None: ...

    async def list_footprints(
        self,
        visible_products: frozenset[str] | None,
        filters: FootprintFilter,
        offset: int,
        limit: int,
    ) -> FootprintPage:
        """Footprints whose ``product_id`` is in ``visible_products`` (None: all) matching
        ``filters``, newest first (created_ns, then id), ``limit`` from ``offset``."""
        ...

    async def close(self) -> None: ...
