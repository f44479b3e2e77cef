"""Lots from the records of every gateway, into PACT 3.0 footprints.

A lot's steps may run on lines behind different gateways. Each gateway publishes order records
for its own steps and, on ``lot_complete``, a lot record summing *its* steps (the same
``record_id`` from every gateway: the hub keeps one per gateway). The hub's lot is the merge:

* **complete** when at least one lot record is in, none says ``incomplete``, every order a lot
  record lists is in at (at least) the listed revision, and every order record received for the
  lot is listed by some lot record — a gateway whose steps ran but whose lot record has not
  arrived keeps the lot open;
* its summary is :func:`edge_agent.attribution.records.build_lot_record` over all its final
  order records (cancelled ones left out), as one agent would have made it;
* a footprint is (re-)issued when the merged lot changes: a later revision of any order makes a
  new footprint version (PACT 3.0: a new id, the earlier ones in ``precedingPfIds``; the earlier
  versions are Deprecated).

Product footprints cover calendar periods (``product_period``) that have ended: every complete
lot of the product at the site whose lot record ends in the period.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge_agent.attribution.records import build_lot_record
from edge_agent.domain import NS_PER_S, ns_from_iso
from edge_agent.errors import FootprintError
from edge_agent.footprint import (
    FootprintInfo,
    LotWithOrders,
    build_pact_v3,
    build_pact_v3_product,
    footprint_id,
    lot_footprint_id,
)
from edge_agent.hub.config import HubConfig
from edge_agent.hub.model import FootprintRow, HubStore

log = logging.getLogger(__name__)

CANCELLED = "order_cancelled"
# The fields of a footprint that change with every issue without changing what it says.
_VOLATILE = ("id", "created", "precedingPfIds", "status", "updated", "version")


@dataclass(frozen=True, slots=True)
class MergedLot:
    site_id: str
    lot_id: str
    complete: bool
    why_not: str  # empty when complete
    lot: Mapping[str, Any] | None  # the merged lot record (None while incomplete)
    orders: tuple[Mapping[str, Any], ...]


def _latest(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for record in records:
        key = str(record["record_id"])
        if key not in out or int(record["revision"]) > int(out[key]["revision"]):
            out[key] = record
    return out


def merge_lot(site_id: str, lot_id: str, records: Sequence[Mapping[str, Any]]) -> MergedLot:
    """The lot as one plant sees it, from every gateway's order and lot records (pure)."""
    orders = _latest(r for r in records if r.get("kind") == "order")
    lots = [r for r in records if r.get("kind") == "lot"]

    def pending(why: str) -> MergedLot:
        return MergedLot(site_id, lot_id, False, why, None, tuple(orders.values()))

    if not lots:
        return pending("no lot record yet (lot_complete not processed by any gateway)")
    if any(r.get("incomplete") for r in lots):
        return pending("a gateway's lot record says incomplete (orders not final yet)")
    listed: dict[str, int] = {}
    for lot in lots:
        for entry in lot.get("orders", ()):
            key = str(entry["record_id"])
            listed[key] = max(listed.get(key, 0), int(entry["revision"]))
    for record_id, revision in listed.items():
        if record_id not in orders:
            return pending(f"order record {record_id} listed by a lot record has not arrived")
        if int(orders[record_id]["revision"]) < revision:
            return pending(f"order record {record_id} revision {revision} has not arrived")
    unlisted = sorted(str(r["order_id"]) for k, r in orders.items() if k not in listed)
    if unlisted:
        return pending(
            f"orders {', '.join(unlisted[:5])} have no lot record yet (their gateway's "
            "lot_complete not processed)"
        )
    final = [r for r in orders.values() if not _cancelled(r)]
    quantities = [r.get("quantity_good") for r in lots if r.get("quantity_good") is not None]
    merged = build_lot_record(
        site_id,
        lot_id,
        final,
        quantity_good=quantities[0] if quantities else None,
        revision=max(int(r["revision"]) for r in lots),
    )
    return MergedLot(site_id, lot_id, True, "", merged.to_json_dict(), tuple(final))


def _cancelled(record: Mapping[str, Any]) -> bool:
    return any(flag.get("code") == CANCELLED for flag in record.get("flags", ()))


def same_footprint(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two footprints say the same (ids, dates and status aside)."""

    def core(footprint: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in footprint.items() if k not in _VOLATILE}

    return core(a) == core(b)


def _utc(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns / NS_PER_S, tz=UTC)


def _tuple(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def footprint_row(
    footprint: Mapping[str, Any], key: str, version: int, product_id: str, created_ns: int
) -> FootprintRow:
    """The store's row for a PACT 3.0 footprint (its filter columns read from it)."""
    pcf = footprint.get("pcf", {})
    named = [
        str(pcf[name])
        for name in (
            "geographyRegionOrSubregion",
            "geographyCountry",
            "geographyCountrySubdivision",
        )
        if pcf.get(name)
    ]
    # A subdivision (JP-27) lies in its country (JP): a filter on the country must find it.
    countries = [name.split("-", 1)[0] for name in named if name[2:3] == "-"]
    geography = tuple(dict.fromkeys([*named, *countries]))
    # PACT 3.0: without a validity period, a footprint is valid for 3 years from the end of
    # its reference period.
    reference_end = pcf.get("referencePeriodEnd")
    start = footprint.get("validityPeriodStart") or reference_end
    start_ns = ns_from_iso(str(start)) if start else created_ns
    end = footprint.get("validityPeriodEnd")
    end_ns = ns_from_iso(str(end)) if end else _plus_years(start_ns, VALIDITY_YEARS)
    return FootprintRow(
        id=str(footprint["id"]),
        key=key,
        version=version,
        status="Active",
        product_id=product_id,
        product_ids=_tuple(footprint.get("productIds")),
        company_ids=_tuple(footprint.get("companyIds")),
        classifications=_tuple(footprint.get("productClassifications")),
        geography=geography,
        validity_start_ns=start_ns,
        validity_end_ns=end_ns,
        created_ns=created_ns,
        preceding_ids=_tuple(footprint.get("precedingPfIds")),
        payload=dict(footprint),
    )


VALIDITY_YEARS = 3


def _plus_years(ts_ns: int, years: int) -> int:
    moment = _utc(ts_ns)
    try:
        later = moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        later = moment.replace(year=moment.year + years, day=28)
    return int(later.timestamp()) * NS_PER_S + ts_ns % NS_PER_S


def period_of(ts_ns: int, period: str) -> tuple[datetime, datetime]:
    """The calendar period (UTC) containing ``ts_ns``: month, quarter or year."""
    moment = _utc(ts_ns)
    if period == "year":
        return datetime(moment.year, 1, 1, tzinfo=UTC), datetime(moment.year + 1, 1, 1, tzinfo=UTC)
    months = 3 if period == "quarter" else 1
    first = (moment.month - 1) // months * months + 1
    start = datetime(moment.year, first, 1, tzinfo=UTC)
    month = first + months
    end = datetime(moment.year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_label(start: datetime, period: str) -> str:
    if period == "year":
        return f"{start.year}"
    if period == "quarter":
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    return f"{start.year}-{start.month:02d}"


class Assembler:
    """Turns stored records into stored footprints (the hub's imperative shell for it)."""

    def __init__(self, config: HubConfig, store: HubStore) -> None:
        self._config = config
        self._store = store
        self._info: dict[str, FootprintInfo] = {
            site.id: config.footprint.info(site.as_site()) for site in config.sites
        }
        self.issued = 0

    async def lot(self, site_id: str, lot_id: str, now_ns: int) -> FootprintRow | None:
        """(Re-)issue the lot's footprint if the lot is complete and changed; returns the new
        version's row, None when nothing was issued."""
        info = self._info.get(site_id)
        if info is None:
            return None
        merged = merge_lot(site_id, lot_id, await self._store.lot_records(site_id, lot_id))
        if not merged.complete or merged.lot is None:
            log.debug("lot %s/%s not complete: %s", site_id, lot_id, merged.why_not)
            return None
        key = f"lot:{site_id}:{lot_id}"
        product_id = str(merged.lot.get("product_id") or "")
        latest = await self._store.latest_footprint(key)
        version = 1 if latest is None else latest.version + 1
        preceding = [lot_footprint_id("pact-v3", site_id, lot_id, v) for v in range(1, version)]
        try:
            footprint = build_pact_v3(
                merged.lot,
                list(merged.orders),
                info,
                created_at=_utc(now_ns),
                version=version,
                preceding_ids=preceding,
            )
        except FootprintError as exc:
            log.warning("lot %s/%s: no footprint: %s", site_id, lot_id, exc)
            return None
        if latest is not None and same_footprint(latest.payload, footprint):
            return None
        row = footprint_row(footprint, key, version, product_id, now_ns)
        if await self._store.save_footprint(row):
            self.issued += 1
            log.info(
                "footprint %s v%d of lot %s/%s: %s kg CO2e per %s",
                row.id, version, site_id, lot_id,
                footprint["pcf"]["pcfExcludingBiogenicUptake"],
                footprint["pcf"]["declaredUnitOfMeasurement"],
            )  # fmt: skip
            return row
        return None

    async def product_period(
        self, site_id: str, product_id: str, start: datetime, end: datetime, now_ns: int
    ) -> FootprintRow | None:
        """(Re-)issue a product's footprint over an ended period from its complete lots."""
        info = self._info.get(site_id)
        period = self._config.product_period
        if info is None or period is None:
            return None
        start_ns = int(start.timestamp()) * NS_PER_S
        end_ns = int(end.timestamp()) * NS_PER_S
        lots: list[LotWithOrders] = []
        for site, lot_id in await self._store.lots_of_product(product_id, start_ns, end_ns):
            if site != site_id:
                continue
            merged = merge_lot(site, lot_id, await self._store.lot_records(site, lot_id))
            if merged.complete and merged.lot is not None:
                lots.append((merged.lot, list(merged.orders)))
        if not lots:
            return None
        key = f"product:{site_id}:{product_id}:{period_label(start, period)}"
        latest = await self._store.latest_footprint(key)
        version = 1 if latest is None else latest.version + 1
        identity = ("product", site_id, product_id, period_label(start, period))
        preceding = [footprint_id("pact-v3", identity, v) for v in range(1, version)]
        try:
            footprint = build_pact_v3_product(
                lots, info, start, end, created_at=_utc(now_ns), version=version,
                preceding_ids=preceding,
            )  # fmt: skip
        except FootprintError as exc:
            log.warning("product %s %s: no footprint: %s", product_id, key, exc)
            return None
        footprint["id"] = footprint_id("pact-v3", identity, version)
        if latest is not None and same_footprint(latest.payload, footprint):
            return None
        row = footprint_row(footprint, key, version, product_id, now_ns)
        if await self._store.save_footprint(row):
            self.issued += 1
            return row
        return None
