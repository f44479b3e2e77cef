""":class:`~edge_agent.hub.model.HubStore` on SQLite or PostgreSQL: one implementation in
SQLAlchemy Core; the dialect differences live in :mod:`.engine`.

Every method is one transaction. Writes that several hub instances may make at once are
serialised where they must be: per gateway (its row in ``gateways`` is locked while its sequence
ranges are merged) and per footprint key (its row in ``footprint_keys``); records themselves
are inserted with ``ON CONFLICT DO NOTHING``, so a record delivered to two instances is stored
once. On SQLite one writer at a time is the rule anyway (``BEGIN IMMEDIATE``). A PostgreSQL
deadlock or serialization failure runs the transaction again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    delete,
    func,
    insert,
    intersect,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from edge_agent.domain import ns_from_iso
from edge_agent.errors import StoreError
from edge_agent.hub.config import HubStoreConfig
from edge_agent.hub.model import (
    FootprintFilter,
    FootprintPage,
    FootprintRow,
    FootprintStatus,
    GatewayProgress,
    HubStore,
    IncomingRecord,
)
from edge_agent.hub.store.engine import (
    WRITE_OPTION,
    create_engine_for,
    insert_ignoring_conflicts,
    is_sqlite,
    should_retry,
)
from edge_agent.hub.store.migrations import migrate
from edge_agent.hub.store.ranges import holes, merge_ranges, ranges_of
from edge_agent.hub.store.tables import (
    FACET_CLASSIFICATION,
    FACET_COMPANY,
    FACET_GEOGRAPHY,
    FACET_PRODUCT,
    footprint_keys,
    footprint_terms,
    footprints,
    gateway_ranges,
    gateways,
)
from edge_agent.hub.store.tables import (
    records as records_table,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS = 8  # PostgreSQL deadlocks / serialization failures between instances
RecordKey = tuple[str, int]


def _json(value: Any) -> str:
    # ASCII: a lone surrogate that a JSON payload may carry ("\ud800") cannot be encoded as
    # UTF-8 and would make the batch fail forever; escaped, it is stored and served as sent.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _describe(exc: BaseException) -> str:
    """The driver's message, without SQLAlchemy's echo of the statement and its parameters."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig).__name__}: {orig}" if orig is not None else f"{type(exc).__name__}: {exc}"


def _lot_columns(record: IncomingRecord) -> tuple[str | None, int | None]:
    """A lot record's product and end (None for other kinds or when absent)."""
    if record.kind != "lot":
        return None, None
    product = record.payload.get("product_id")
    end = record.payload.get("end")
    end_ns: int | None = None
    if isinstance(end, str):
        try:
            end_ns = ns_from_iso(end)
        except ValueError:
            end_ns = None
    return (product if isinstance(product, str) and product else None), end_ns


def _record_row(record: IncomingRecord) -> dict[str, Any]:
    product_id, end_ns = _lot_columns(record)
    return {
        "record_id": record.record_id,
        "revision": record.revision,
        "kind": record.kind,
        "site_id": record.site_id,
        "lot_id": record.lot_id,
        "order_id": record.order_id,
        "gateway_id": record.gateway_id,
        "gateway_seq": record.gateway_seq,
        "product_id": product_id,
        "end_ns": end_ns,
        "received_ns": record.received_ns,
        "payload": _json(dict(record.payload)),
    }


def _strings(text: str) -> tuple[str, ...]:
    return tuple(str(value) for value in json.loads(text))


def _footprint(row: Row[Any]) -> FootprintRow:
    return FootprintRow(
        id=row.id,
        key=row.key,
        version=int(row.version),
        status=cast(FootprintStatus, row.status),
        product_id=row.product_id,
        product_ids=_strings(row.product_ids),
        company_ids=_strings(row.company_ids),
        classifications=_strings(row.classifications),
        geography=_strings(row.geography),
        validity_start_ns=int(row.validity_start_ns),
        validity_end_ns=int(row.validity_end_ns),
        created_ns=int(row.created_ns),
        preceding_ids=_strings(row.preceding_ids),
        payload=json.loads(row.payload),
    )


def _filter_conditions(
    visible_products: frozenset[str] | None, filters: FootprintFilter
) -> list[ColumnElement[bool]]:
    fp, terms = footprints.c, footprint_terms.c
    conditions: list[ColumnElement[bool]] = []
    if visible_products is not None:
        conditions.append(fp.product_id.in_(sorted(visible_products)))
    wanted = [
        # PACT 3.0: "The match must be case-insensitive" — terms are stored case-folded.
        and_(terms.facet == facet, terms.value.in_(sorted({v.casefold() for v in values})))
        for facet, values in (
            (FACET_PRODUCT, filters.product_ids),
            (FACET_COMPANY, filters.company_ids),
            (FACET_GEOGRAPHY, filters.geography),
            (FACET_CLASSIFICATION, filters.classifications),
        )
        if values
    ]
    if wanted:
        # Each filter's footprints, intersected: a hash/sort set operation, linear whatever
        # the planner thinks of the row counts. PostgreSQL without statistics (before its
        # first ANALYZE) nested-looped one IN subquery per filter into each other: 2 s over
        # 10,000 footprints; one EXISTS per filter: 10 s. This: 30 ms, 14 ms analysed.
        per_filter = [select(terms.footprint_id).where(match) for match in wanted]
        matching = per_filter[0] if len(per_filter) == 1 else intersect(*per_filter)
        conditions.append(fp.id.in_(matching))
    if filters.valid_on_ns is not None:
        conditions.append(fp.validity_start_ns <= filters.valid_on_ns)
        conditions.append(fp.validity_end_ns >= filters.valid_on_ns)
    if filters.valid_after_ns is not None:
        conditions.append(fp.validity_start_ns > filters.valid_after_ns)
    if filters.valid_before_ns is not None:
        conditions.append(fp.validity_end_ns < filters.valid_before_ns)
    if filters.status is not None:
        conditions.append(fp.status == filters.status)
    return conditions


class SqlHubStore:
    """The hub's database (SQLite or PostgreSQL, by the engine's URL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite has one writer at a time: queue this process's writers here rather than in
        # SQLite's busy handler (which polls).
        self._write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if is_sqlite(engine) else contextlib.nullcontext()
        )

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    async def _write(self, what: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in one write transaction, committed when it returns."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._write_lock, self.engine.connect() as conn:
                    await conn.execution_options(**{WRITE_OPTION: True})
                    async with conn.begin():
                        return await work(conn)
            except DBAPIError as exc:
                if attempt < MAX_ATTEMPTS and should_retry(exc):
                    log.debug("%s: %s; running it again", what, _describe(exc))
                    await asyncio.sleep(random.uniform(0.001, 0.01 * attempt))
                    continue
                raise StoreError(f"{what} failed: {_describe(exc)}") from exc
            except (SQLAlchemyError, OSError) as exc:
                raise StoreError(f"{what} failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, what: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in one read transaction (one snapshot for all its statements)."""
        try:
            async with self.engine.connect() as conn:
                if not is_sqlite(self.engine):
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    return await work(conn)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"{what} failed: {_describe(exc)}") from exc

    # -- records --------------------------------------------------------------------------

    async def add_records(self, records: Sequence[IncomingRecord]) -> list[bool]:
        if not records:
            return []
        keys: list[RecordKey] = [(r.record_id, r.revision) for r in records]
        first: dict[RecordKey, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        # Inserted in key order: concurrent batches then wait for each other's rows in one
        # order (no deadlock between two instances given overlapping batches).
        rows = [_record_row(records[first[key]]) for key in sorted(first)]
        seen: dict[str, tuple[int, int]] = {}
        seqs: dict[str, set[int]] = {}
        for record in records:
            low, high = seen.get(record.gateway_id, (record.received_ns, record.received_ns))
            seen[record.gateway_id] = (
                min(low, record.received_ns),
                max(high, record.received_ns),
            )
            if record.gateway_seq is not None:
                seqs.setdefault(record.gateway_id, set()).add(record.gateway_seq)

        async def work(conn: AsyncConnection) -> set[RecordKey]:
            await self._lock_gateways(conn, seen)
            statement = insert_ignoring_conflicts(conn, records_table).returning(
                records_table.c.record_id, records_table.c.revision
            )
            result = await conn.execute(statement, rows)
            inserted = {(str(row[0]), int(row[1])) for row in result}
            for gateway_id in sorted(seqs):
                await self._add_seqs(conn, gateway_id, seqs[gateway_id])
            return inserted

        inserted = await self._write(f"storing {len(records)} records", work)
        return [first[key] == index and key in inserted for index, key in enumerate(keys)]

    async def _lock_gateways(
        self, conn: AsyncConnection, seen: Mapping[str, tuple[int, int]]
    ) -> None:
        """Register new gateways and lock their rows (in id order) until the commit."""
        ids = sorted(seen)
        await conn.execute(
            insert_ignoring_conflicts(conn, gateways),
            [
                {"gateway_id": gid, "first_seen_ns": seen[gid][0], "last_seen_ns": seen[gid][1]}
                for gid in ids
            ],
        )
        locked = await conn.execute(
            select(gateways.c.gateway_id, gateways.c.last_seen_ns)
            .where(gateways.c.gateway_id.in_(ids))
            .order_by(gateways.c.gateway_id)
            .with_for_update()
        )
        for gateway_id, last_seen_ns in locked.all():
            if seen[gateway_id][1] > last_seen_ns:
                await conn.execute(
                    update(gateways)
                    .where(gateways.c.gateway_id == gateway_id)
                    .values(last_seen_ns=seen[gateway_id][1])
                )

    @staticmethod
    async def _add_seqs(conn: AsyncConnection, gateway_id: str, numbers: set[int]) -> None:
        """Merge ``numbers`` into the gateway's ranges, reading and writing only the ranges
        that can touch them: those starting within the numbers' span, and the one before."""
        new = ranges_of(numbers)
        low, high = new[0][0], new[-1][1]
        ranges = gateway_ranges.c
        of_gateway = ranges.gateway_id == gateway_id
        before = await conn.execute(
            select(ranges.first_seq, ranges.last_seq)
            .where(of_gateway, ranges.first_seq < low)
            .order_by(ranges.first_seq.desc())
            .limit(1)
        )
        within = await conn.execute(
            select(ranges.first_seq, ranges.last_seq).where(
                of_gateway, ranges.first_seq >= low, ranges.first_seq <= high + 1
            )
        )
        existing = {(int(a), int(b)) for a, b in [*before.all(), *within.all()]}
        merged = set(merge_ranges([*existing, *new]))
        gone, added = existing - merged, merged - existing
        if gone:
            await conn.execute(
                delete(gateway_ranges).where(
                    of_gateway, ranges.first_seq.in_(sorted(a for a, _ in gone))
                )
            )
        if added:
            await conn.execute(
                insert(gateway_ranges),
                [
                    {"gateway_id": gateway_id, "first_seq": a, "last_seq": b}
                    for a, b in sorted(added)
                ],
            )

    async def lot_records(self, site_id: str, lot_id: str) -> list[Mapping[str, Any]]:
        r = records_table.c
        latest = (
            select(r.record_id, func.max(r.revision).label("revision"))
            .where(r.site_id == site_id, r.lot_id == lot_id, r.kind.in_(("order", "lot")))
            .group_by(r.record_id)
            .subquery()
        )
        query = (
            select(r.payload)
            .select_from(
                records_table.join(
                    latest,
                    and_(r.record_id == latest.c.record_id, r.revision == latest.c.revision),
                )
            )
            .order_by(r.kind, r.record_id)
        )

        async def work(conn: AsyncConnection) -> list[Mapping[str, Any]]:
            return [json.loads(text) for text in (await conn.scalars(query)).all()]

        return await self._read(f"reading the records of lot {site_id}/{lot_id}", work)

    async def lots_of_product(
        self, product_id: str, start_ns: int, end_ns: int
    ) -> list[tuple[str, str]]:
        r = records_table.c
        newer = records_table.alias("newer")
        highest = (
            select(func.max(newer.c.revision))
            .where(newer.c.record_id == r.record_id)
            .scalar_subquery()
        )
        query = (
            select(r.site_id, r.lot_id)
            .where(
                r.product_id == product_id,
                r.kind == "lot",
                r.end_ns >= start_ns,
                r.end_ns < end_ns,
                r.revision == highest,
            )
            .distinct()
            .order_by(r.site_id, r.lot_id)
        )

        async def work(conn: AsyncConnection) -> list[tuple[str, str]]:
            return [(str(site), str(lot)) for site, lot in (await conn.execute(query)).all()]

        return await self._read(f"finding the lots of product {product_id}", work)

    async def gateway_progress(self, gateway_id: str) -> GatewayProgress:
        ranges = gateway_ranges.c
        query = (
            select(ranges.first_seq, ranges.last_seq)
            .where(ranges.gateway_id == gateway_id)
            .order_by(ranges.first_seq)
        )

        async def work(conn: AsyncConnection) -> GatewayProgress:
            held = [(int(a), int(b)) for a, b in (await conn.execute(query)).all()]
            return GatewayProgress(gateway_id, held[-1][1] if held else None, holes(held))

        return await self._read(f"reading the progress of gateway {gateway_id}", work)

    async def gateways(self) -> list[str]:
        query = select(gateways.c.gateway_id).order_by(gateways.c.gateway_id)

        async def work(conn: AsyncConnection) -> list[str]:
            return [str(gid) for gid in (await conn.scalars(query)).all()]

        return await self._read("listing the gateways", work)

    # -- footprints -----------------------------------------------------------------------

    async def save_footprint(self, row: FootprintRow) -> bool:
        active = _json({**row.payload, "status": "Active"})
        deprecated = _json({**row.payload, "status": "Deprecated"})
        values = {
            "id": row.id,
            "key": row.key,
            "version": row.version,
            "product_id": row.product_id,
            "validity_start_ns": row.validity_start_ns,
            "validity_end_ns": row.validity_end_ns,
            "created_ns": row.created_ns,
            "product_ids": _json(list(row.product_ids)),
            "company_ids": _json(list(row.company_ids)),
            "classifications": _json(list(row.classifications)),
            "geography": _json(list(row.geography)),
            "preceding_ids": _json(list(row.preceding_ids)),
        }
        terms = sorted(
            {
                (facet, value.casefold())
                for facet, found in (
                    (FACET_PRODUCT, row.product_ids),
                    (FACET_COMPANY, row.company_ids),
                    (FACET_CLASSIFICATION, row.classifications),
                    (FACET_GEOGRAPHY, row.geography),
                )
                for value in found
            }
        )

        async def work(conn: AsyncConnection) -> bool:
            keys = footprint_keys.c
            await conn.execute(
                insert_ignoring_conflicts(conn, footprint_keys).values(
                    key=row.key, latest_version=row.version
                )
            )
            latest = await conn.scalar(
                select(keys.latest_version).where(keys.key == row.key).with_for_update()
            )
            newest = max(int(latest or 0), row.version)
            # A version saved after a newer one (out of order) is stored Deprecated.
            is_newest = row.version >= newest
            stored = await conn.execute(
                insert_ignoring_conflicts(conn, footprints)
                .values(
                    **values,
                    status="Active" if is_newest else "Deprecated",
                    payload=active if is_newest else deprecated,
                )
                .returning(footprints.c.id)
            )
            if stored.first() is None:
                return False  # this id or (key, version) is already stored
            if terms:
                await conn.execute(
                    insert(footprint_terms),
                    [{"footprint_id": row.id, "facet": f, "value": v} for f, v in terms],
                )
            if not is_newest:
                return True
            if row.version > int(latest or 0):
                await conn.execute(
                    update(footprint_keys)
                    .where(keys.key == row.key)
                    .values(latest_version=row.version)
                )
            fp = footprints.c
            older = await conn.execute(
                select(fp.id, fp.payload).where(
                    fp.key == row.key, fp.version < row.version, fp.status == "Active"
                )
            )
            for pf_id, payload in older.all():
                await conn.execute(
                    update(footprints)
                    .where(fp.id == pf_id)
                    .values(
                        status="Deprecated",
                        payload=_json({**json.loads(payload), "status": "Deprecated"}),
                    )
                )
            return True

        return await self._write(f"saving footprint {row.id} ({row.key} v{row.version})", work)

    async def latest_footprint(self, key: str) -> FootprintRow | None:
        query = (
            select(footprints)
            .where(footprints.c.key == key)
            .order_by(footprints.c.version.desc())
            .limit(1)
        )

        async def work(conn: AsyncConnection) -> FootprintRow | None:
            found = (await conn.execute(query)).first()
            return None if found is None else _footprint(found)

        return await self._read(f"reading the latest footprint of {key}", work)

    async def footprint(self, pf_id: str) -> FootprintRow | None:
        query = select(footprints).where(footprints.c.id == pf_id)

        async def work(conn: AsyncConnection) -> FootprintRow | None:
            found = (await conn.execute(query)).first()
            return None if found is None else _footprint(found)

        return await self._read(f"reading footprint {pf_id}", work)

    async def list_footprints(
        self,
        visible_products: frozenset[str] | None,
        filters: FootprintFilter,
        offset: int,
        limit: int,
    ) -> FootprintPage:
        if visible_products is not None and not visible_products:
            return FootprintPage(items=(), total=0)
        conditions = _filter_conditions(visible_products, filters)
        fp = footprints.c
        count = select(func.count()).select_from(footprints).where(*conditions)
        # The page's ids first (narrow rows, sorted cheaply), then only their payloads: sorting
        # whole rows of several kB each made a filter matching thousands 4x slower.
        chosen = (
            select(fp.id)
            .where(*conditions)
            .order_by(fp.created_ns.desc(), fp.id.desc())
            .offset(max(offset, 0))
            .limit(max(limit, 0))
            .subquery("chosen")
        )
        page = (
            select(footprints)
            .join(chosen, fp.id == chosen.c.id)
            .order_by(fp.created_ns.desc(), fp.id.desc())
        )

        async def work(conn: AsyncConnection) -> FootprintPage:
            total = int(await conn.scalar(count) or 0)
            if limit <= 0 or offset >= total:
                return FootprintPage(items=(), total=total)
            items = [_footprint(found) for found in (await conn.execute(page)).all()]
            return FootprintPage(items=items, total=total)

        return await self._read("listing footprints", work)

    async def close(self) -> None:
        await self.engine.dispose()


async def open_hub_store(config: HubStoreConfig) -> SqlHubStore:
    """Open the configured database, creating or migrating its tables as needed.

    Raises ConfigError for an unusable URL or secret, StoreError when the database cannot be
    reached or its schema is newer than this edge-agent.
    """
    engine = create_engine_for(config)
    where = engine.url.render_as_string(hide_password=True)
    try:
        await migrate(engine)
    except StoreError:
        await engine.dispose()
        raise
    except (SQLAlchemyError, OSError, RuntimeError) as exc:
        await engine.dispose()
        raise StoreError(f"cannot open the hub database {where}: {_describe(exc)}") from exc
    return SqlHubStore(engine)


def _conforms(store: SqlHubStore) -> HubStore:  # mypy checks the Protocol here
    return store
