"""The hub's store, every behaviour on SQLite and on a real PostgreSQL (tests/hub/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, func, insert, select

from edge_agent.errors import ConfigError, StoreError
from edge_agent.hub.config import HubStoreConfig
from edge_agent.hub.model import (
    FootprintFilter,
    FootprintRow,
    FootprintStatus,
    IncomingRecord,
)
from edge_agent.hub.store import SqlHubStore, open_hub_store
from edge_agent.hub.store.engine import engine_url
from edge_agent.hub.store.migrations import MIGRATIONS, schema_version
from edge_agent.hub.store.ranges import holes, merge_ranges, ranges_of
from edge_agent.hub.store.tables import footprints, gateway_ranges, records
from edge_agent.hub.store.tables import schema_version as schema_version_table
from tests.hub.postgres import free_port

SITE = "osaka-plant"
NS_PER_S = 1_000_000_000
T0 = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z


def record(
    record_id: str,
    revision: int = 1,
    *,
    kind: str = "order",
    site: str = SITE,
    lot: str | None = "LOT-1",
    gateway: str = "gw-1",
    seq: int | None = None,
    **fields: Any,
) -> IncomingRecord:
    payload = {
        "record_id": record_id,
        "revision": revision,
        "kind": kind,
        "site_id": site,
        "lot_id": lot,
        **fields,
    }
    return IncomingRecord(
        record_id=record_id,
        revision=revision,
        kind=kind,
        site_id=site,
        lot_id=lot,
        order_id=f"{lot}-{record_id}" if kind == "order" else None,
        gateway_id=gateway,
        gateway_seq=seq,
        payload=payload,
        received_ns=T0 + revision,
    )


def footprint(
    pf_id: str,
    key: str = "lot:osaka-plant:LOT-1",
    version: int = 1,
    *,
    product_id: str = "ENCL-400",
    created_ns: int = T0,
    product_ids: tuple[str, ...] = ("urn:pact:sample.com:product-id:ENCL-400",),
    company_ids: tuple[str, ...] = ("urn:pact:acme.example:company:1",),
    classifications: tuple[str, ...] = (),
    geography: tuple[str, ...] = ("JP",),
    validity: tuple[int, int] = (T0, T0 + 365 * 86_400 * NS_PER_S),
) -> FootprintRow:
    return FootprintRow(
        id=pf_id,
        key=key,
        version=version,
        status="Active",
        product_id=product_id,
        product_ids=product_ids,
        company_ids=company_ids,
        classifications=classifications,
        geography=geography,
        validity_start_ns=validity[0],
        validity_end_ns=validity[1],
        created_ns=created_ns,
        preceding_ids=tuple(f"{key}-v{v}" for v in range(1, version)),
        payload={"id": pf_id, "specVersion": "3.0.0", "version": version, "status": "Active"},
    )


async def count(store: SqlHubStore, table: Table) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


# -- records -------------------------------------------------------------------------------


async def test_adding_a_record_twice_stores_it_once(hub_store: SqlHubStore) -> None:
    assert await hub_store.add_records([record("r1", seq=1)]) == [True]
    assert await hub_store.add_records([record("r1", seq=1)]) == [False]
    # In one batch: the first occurrence is new, the repeat is not; a new revision is new.
    assert await hub_store.add_records(
        [record("r2", seq=2), record("r2", seq=2), record("r1", 2, seq=3), record("r1", seq=1)]
    ) == [True, False, True, False]
    assert await count(hub_store, records) == 3
    assert await hub_store.add_records([]) == []


async def test_lot_records_serve_the_highest_revision(hub_store: SqlHubStore) -> None:
    await hub_store.add_records(
        [
            record("order-a", 1, energy_kwh=1.0),
            record("order-a", 3, energy_kwh=3.0),
            record("order-b", 1, energy_kwh=10.0, gateway="gw-2"),
            record("lot@gw-1", 1, kind="lot", steps=1),
            record("other-lot-order", 5, lot="LOT-2"),
            record("other-site-order", 1, site="nagoya-plant"),
            record("balance", 1, kind="balance", lot=None),
        ]
    )
    # Revision 2 arrives after revision 3: still 3 is served.
    await hub_store.add_records(
        [record("order-a", 2, energy_kwh=2.0), record("lot@gw-1", 2, kind="lot", steps=2)]
    )
    found = await hub_store.lot_records(SITE, "LOT-1")
    assert sorted((p["record_id"], p["revision"]) for p in found) == [
        ("lot@gw-1", 2),
        ("order-a", 3),
        ("order-b", 1),
    ]
    assert {p["record_id"]: p for p in found}["order-a"]["energy_kwh"] == 3.0
    assert await hub_store.lot_records(SITE, "LOT-404") == []


async def test_lots_of_a_product_by_the_end_of_their_latest_lot_record(
    hub_store: SqlHubStore,
) -> None:
    jan, feb, mar = "2026-01-15T10:00:00Z", "2026-02-01T00:00:00.000Z", "2026-03-02T00:00:00Z"
    start, end = T0, T0 + 31 * 86_400 * NS_PER_S  # January
    await hub_store.add_records(
        [
            record("l1@gw-1", kind="lot", lot="L1", product_id="P", end=jan),
            # Two gateways' lot records of one lot: the lot once.
            record("l1@gw-2", kind="lot", lot="L1", product_id="P", end=jan, gateway="gw-2"),
            record("l2@gw-1", kind="lot", lot="L2", product_id="P", end=feb),  # end excluded
            record("l3@gw-1", kind="lot", lot="L3", product_id="Q", end=jan),  # other product
            record("l4@gw-1", kind="lot", lot="L4", product_id="P", end=None),  # not ended
            record("l5@gw-1", kind="lot", lot="L5", product_id="P", end=jan),
            record("l6@gw-1", kind="lot", lot="L6", product_id="P", end=mar),
            record("l7@gw-1", kind="lot", lot="L7", product_id="P", end="2026-01-01T00:00:00Z"),
            record("o8", kind="order", lot="L8", product_id="P", end=jan),  # not a lot record
        ]
    )
    # A later revision of L5 ends in March, one of L6 in January.
    await hub_store.add_records(
        [
            record("l5@gw-1", 2, kind="lot", lot="L5", product_id="P", end=mar),
            record("l6@gw-1", 2, kind="lot", lot="L6", product_id="P", end=jan),
        ]
    )
    assert await hub_store.lots_of_product("P", start, end) == [
        (SITE, "L1"),
        (SITE, "L6"),
        (SITE, "L7"),
    ]
    assert await hub_store.lots_of_product("Q", start, end) == [(SITE, "L3")]
    assert await hub_store.lots_of_product("P", end, end + NS_PER_S) == [(SITE, "L2")]


async def test_gateway_progress_and_holes(hub_store: SqlHubStore) -> None:
    await hub_store.add_records([record(f"a{s}", seq=s) for s in (1, 2, 3, 7, 10)])
    await hub_store.add_records([record("a9", seq=9), record("no-seq", gateway="gw-0")])
    progress = await hub_store.gateway_progress("gw-1")
    assert progress.highest_seq == 10
    assert progress.holes == ((4, 6), (8, 8))
    assert await hub_store.gateways() == ["gw-0", "gw-1"]
    assert (await hub_store.gateway_progress("gw-0")).highest_seq is None
    unknown = await hub_store.gateway_progress("gw-404")
    assert (unknown.highest_seq, unknown.holes) == (None, ())
    # Filling the holes merges the ranges into one row.
    await hub_store.add_records([record(f"a{s}", seq=s) for s in (4, 5, 6, 8)])
    progress = await hub_store.gateway_progress("gw-1")
    assert (progress.highest_seq, progress.holes) == (10, ())
    assert await count(hub_store, gateway_ranges) == 1


def complement(numbers: set[int]) -> tuple[tuple[int, int], ...]:
    missing = sorted(set(range(min(numbers), max(numbers) + 1)) - numbers)
    return tuple(merge_ranges((n, n) for n in missing))


@given(st.sets(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=300))
def test_ranges_hold_exactly_the_numbers(numbers: set[int]) -> None:
    ranges = ranges_of(numbers)
    assert {n for a, b in ranges for n in range(a, b + 1)} == numbers
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(ranges))  # disjoint, apart
    assert holes(ranges) == complement(numbers)


_gateway_counter = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    numbers=st.sets(st.integers(min_value=1, max_value=400), min_size=1, max_size=120),
    batches=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**32),
)
async def test_holes_are_the_complement_of_the_seqs_held(
    hub_store: SqlHubStore, numbers: set[int], batches: int, seed: int
) -> None:
    gateway = f"gw-prop-{next(_gateway_counter)}"  # each example its own gateway
    rng = random.Random(seed)
    order = sorted(numbers)
    rng.shuffle(order)
    chunks = [order[part::batches] for part in range(batches)]
    chunks.append(rng.sample(order, len(order) // 3))  # redelivered records
    for chunk in chunks:
        if chunk:
            await hub_store.add_records(
                [record(f"{gateway}-{s}", seq=s, gateway=gateway) for s in chunk]
            )
    progress = await hub_store.gateway_progress(gateway)
    assert progress.highest_seq == max(numbers)
    assert progress.holes == complement(numbers)
    async with hub_store.engine.connect() as conn:  # stored as disjoint ranges
        rows = await conn.scalar(
            select(func.count())
            .select_from(gateway_ranges)
            .where(gateway_ranges.c.gateway_id == gateway)
        )
    assert rows == len(progress.holes) + 1


# -- footprints ----------------------------------------------------------------------------


async def test_a_new_version_deprecates_the_older_ones(hub_store: SqlHubStore) -> None:
    key = "lot:osaka-plant:LOT-1"
    v1 = footprint("pf-1", key, 1, classifications=("urn:x:cpc:4291",))
    assert await hub_store.save_footprint(v1)
    assert await hub_store.latest_footprint(key) == v1  # every column round-trips
    assert not await hub_store.save_footprint(v1)  # idempotent
    assert not await hub_store.save_footprint(replace(v1, id="pf-1-again"))  # same (key, version)

    v2 = footprint("pf-2", key, 2, created_ns=T0 + 1)
    assert await hub_store.save_footprint(v2)
    old = await hub_store.footprint("pf-1")
    assert old is not None
    assert old.status == "Deprecated"
    assert old.payload["status"] == "Deprecated"  # what the API serves
    new = await hub_store.latest_footprint(key)
    assert new is not None
    assert (new.id, new.status, new.payload["status"]) == ("pf-2", "Active", "Active")
    assert new.preceding_ids == (f"{key}-v1",)

    # Versions saved out of order: the older one is stored Deprecated, the newest stays Active.
    assert await hub_store.save_footprint(footprint("pf-4", key, 4, created_ns=T0 + 4))
    assert await hub_store.save_footprint(footprint("pf-3", key, 3, created_ns=T0 + 3))
    statuses = {
        row.id: (row.status, row.payload["status"])
        for row in (await hub_store.list_footprints(None, FootprintFilter(), 0, 10)).items
    }
    assert statuses == {
        "pf-1": ("Deprecated", "Deprecated"),
        "pf-2": ("Deprecated", "Deprecated"),
        "pf-3": ("Deprecated", "Deprecated"),
        "pf-4": ("Active", "Active"),
    }
    assert await hub_store.footprint("pf-404") is None
    assert await hub_store.latest_footprint("lot:osaka-plant:LOT-404") is None


DAY = 86_400 * NS_PER_S


def catalogue() -> list[FootprintRow]:
    """Footprints with every filter column varied."""
    products = ["ENCL-400", "ENCL-600", "BRKT-10"]
    companies = ["urn:c:acme", "urn:c:acme-jp", "urn:c:other"]
    geographies = [("Asia", "JP", "JP-27"), ("JP",), ("Europe", "DE")]
    classes = [("urn:cpc:4291",), ("urn:cpc:4291", "urn:cpc:4299"), ()]
    rows = []
    for i in range(30):
        product = products[i % 3]
        start = T0 + (i % 5) * 30 * DAY
        rows.append(
            footprint(
                f"pf-{i:02d}",
                f"lot:osaka-plant:LOT-{i // 2}",
                1 + i % 2,
                product_id=product,
                created_ns=T0 + (i % 7) * DAY,  # ties: ordered by id
                product_ids=(f"urn:p:{product}", f"urn:p:any-{i % 2}"),
                company_ids=(companies[i % 3], companies[(i + 1) % 3])[: 1 + i % 2],
                geography=geographies[i % 4 % 3],
                classifications=classes[i % 3],
                validity=(start, start + 60 * DAY),
            )
        )
    return rows


def matches(
    row: FootprintRow, visible: frozenset[str] | None, f: FootprintFilter, status: FootprintStatus
) -> bool:
    def any_of(wanted: tuple[str, ...], have: tuple[str, ...]) -> bool:
        return not wanted or bool(set(wanted) & set(have))

    return (
        (visible is None or row.product_id in visible)
        and any_of(f.product_ids, row.product_ids)
        and any_of(f.company_ids, row.company_ids)
        and any_of(f.geography, row.geography)
        and any_of(f.classifications, row.classifications)
        and (f.valid_on_ns is None or row.validity_start_ns <= f.valid_on_ns <= row.validity_end_ns)
        and (f.valid_after_ns is None or f.valid_after_ns < row.validity_start_ns)
        and (f.valid_before_ns is None or f.valid_before_ns > row.validity_end_ns)
        and (f.status is None or f.status == status)
    )


FILTERS: dict[str, FootprintFilter] = {
    "none": FootprintFilter(),
    "product_ids": FootprintFilter(product_ids=("urn:p:ENCL-400",)),
    "product_ids any": FootprintFilter(product_ids=("urn:p:ENCL-400", "urn:p:BRKT-10")),
    "company_ids": FootprintFilter(company_ids=("urn:c:acme-jp",)),
    "geography region": FootprintFilter(geography=("Asia",)),
    "geography country": FootprintFilter(geography=("JP",)),
    "geography subdivision or country": FootprintFilter(geography=("JP-27", "DE")),
    "classifications": FootprintFilter(classifications=("urn:cpc:4299",)),
    "valid_on": FootprintFilter(valid_on_ns=T0 + 45 * DAY),
    "valid_after": FootprintFilter(valid_after_ns=T0 + 50 * DAY),
    "valid_before": FootprintFilter(valid_before_ns=T0 + 100 * DAY),
    "status active": FootprintFilter(status="Active"),
    "status deprecated": FootprintFilter(status="Deprecated"),
    "nothing": FootprintFilter(company_ids=("urn:c:nobody",)),
    "combined": FootprintFilter(
        product_ids=("urn:p:any-0", "urn:p:any-1"),
        company_ids=("urn:c:acme", "urn:c:acme-jp"),
        geography=("JP",),
        classifications=("urn:cpc:4291",),
        valid_on_ns=T0 + 70 * DAY,
        status="Active",
    ),
}
VISIBILITY: dict[str, frozenset[str] | None] = {
    "all": None,
    "one product": frozenset({"ENCL-400"}),
    "two products": frozenset({"ENCL-600", "BRKT-10", "NOT-SOLD"}),
    "none": frozenset(),
}


async def test_list_footprints_filters_visibility_and_pages(hub_store: SqlHubStore) -> None:
    rows = catalogue()
    for row in rows:
        assert await hub_store.save_footprint(row)
    # Each key has versions 1 and 2: every version 1 is Deprecated.
    status: dict[str, FootprintStatus] = {
        row.id: "Deprecated" if row.version == 1 else "Active" for row in rows
    }
    newest_first = sorted(rows, key=lambda r: (r.created_ns, r.id), reverse=True)
    for (f_name, filters), (v_name, visible) in itertools.product(
        FILTERS.items(), VISIBILITY.items()
    ):
        expected = [r.id for r in newest_first if matches(r, visible, filters, status[r.id])]
        page = await hub_store.list_footprints(visible, filters, 0, 100)
        assert [r.id for r in page.items] == expected, (f_name, v_name)
        assert page.total == len(expected), (f_name, v_name)
        assert all(r.status == status[r.id] for r in page.items)
    assert 0 < len([r for r in rows if matches(r, None, FILTERS["combined"], status[r.id])]) < 5

    # Pages of 7 from every offset: consecutive slices of the same order, the same total.
    everything = [r.id for r in newest_first]
    for offset in range(0, 35, 7):
        page = await hub_store.list_footprints(None, FootprintFilter(), offset, 7)
        assert [r.id for r in page.items] == everything[offset : offset + 7]
        assert page.total == 30
    visible = frozenset({"ENCL-600"})
    page = await hub_store.list_footprints(visible, FILTERS["geography country"], 2, 3)
    expected = [
        r.id
        for r in newest_first
        if matches(r, visible, FILTERS["geography country"], status[r.id])
    ]
    assert [r.id for r in page.items] == expected[2:5]
    assert page.total == len(expected)
    empty = await hub_store.list_footprints(None, FootprintFilter(), 0, 0)
    assert (list(empty.items), empty.total) == ([], 30)


# -- durability, schema, configuration ----------------------------------------------------


async def test_a_commit_survives_closing_and_reopening(hub_store_config: HubStoreConfig) -> None:
    store = await open_hub_store(hub_store_config)
    assert await store.add_records([record("r1", seq=1, energy_kwh=1.5)]) == [True]
    assert await store.save_footprint(footprint("pf-1"))
    await store.close()

    store = await open_hub_store(hub_store_config)
    try:
        assert await store.add_records([record("r1", seq=1)]) == [False]
        assert [p["energy_kwh"] for p in await store.lot_records(SITE, "LOT-1")] == [1.5]
        assert (await store.gateway_progress("gw-1")).highest_seq == 1
        assert await store.footprint("pf-1") == footprint("pf-1")
        assert await schema_version(store.engine) == len(MIGRATIONS)
        assert await count(store, schema_version_table) == len(MIGRATIONS)  # migrated once
    finally:
        await store.close()


async def test_a_newer_schema_is_refused(
    hub_store: SqlHubStore, hub_store_config: HubStoreConfig
) -> None:
    async with hub_store.engine.begin() as conn:
        await conn.execute(insert(schema_version_table).values(version=99, applied_ns=0))
    await hub_store.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await open_hub_store(hub_store_config)


async def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Any) -> None:
    store = await open_hub_store(HubStoreConfig(url=f"sqlite:///{tmp_path}/sub/dir/hub.db"))
    try:
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2  # FULL
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await store.close()


def test_postgresql_url_takes_the_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("HUB_DB_PASSWORD", "s3cret")
    url = engine_url(
        HubStoreConfig(
            url="postgresql://hub@db.plant.example:5433/hub", password_env="HUB_DB_PASSWORD"
        )
    )
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+asyncpg", "hub", "s3cret", "db.plant.example", 5433, "hub",
    )  # fmt: skip
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    url = engine_url(HubStoreConfig(url="postgresql://hub@db/hub", password_file=secret))
    assert url.password == "from-file"
    monkeypatch.delenv("HUB_DB_PASSWORD")
    with pytest.raises(ConfigError, match="HUB_DB_PASSWORD"):
        engine_url(HubStoreConfig(url="postgresql://hub@db/hub", password_env="HUB_DB_PASSWORD"))
    with pytest.raises(ConfigError, match="names no database"):
        engine_url(HubStoreConfig(url="postgresql://hub@db"))
    assert engine_url(HubStoreConfig(url="sqlite:///data/hub.db")).database == "data/hub.db"


async def test_an_unreachable_postgresql_is_a_store_error() -> None:
    config = HubStoreConfig(url=f"postgresql://hub@127.0.0.1:{free_port()}/hub")
    with pytest.raises(StoreError, match="cannot open the hub database"):
        await open_hub_store(config)


# -- several hub instances -----------------------------------------------------------------


async def test_concurrent_writers_neither_lose_nor_duplicate_records(
    hub_store: SqlHubStore, hub_store_config: HubStoreConfig
) -> None:
    """Two store instances (as two hub instances) on one database, two writers each at once:
    first the records shared out between them (a shared subscription: neighbouring sequence
    numbers of one gateway stored at the same time by different instances), then every record
    again to every writer in shuffled, overlapping batches (redeliveries)."""
    other = await open_hub_store(hub_store_config)
    try:
        all_records = [
            record(f"r{i:04d}", seq=(i + 1) // 2, gateway=f"gw-{i % 2}", lot=f"LOT-{i % 17}")
            for i in range(1, 801)
        ]  # 400 records of each of two gateways, interleaved
        rng = random.Random(7)
        writers = (hub_store, other, hub_store, other)

        async def feed(store: SqlHubStore, work: list[IncomingRecord], size: int) -> list[str]:
            new: list[str] = []
            for start in range(0, len(work), size):
                batch = work[start : start + size]
                flags = await store.add_records(batch)
                new += [r.record_id for r, flag in zip(batch, flags, strict=True) if flag]
            return new

        shared_out = await asyncio.gather(
            *(feed(store, all_records[i::4], 5) for i, store in enumerate(writers))
        )
        redelivered = await asyncio.gather(
            *(feed(store, rng.sample(all_records, len(all_records)), 40) for store in writers)
        )
        new_ids = [rid for result in shared_out for rid in result]
        assert sorted(new_ids) == sorted(r.record_id for r in all_records)  # each new once
        assert [rid for result in redelivered for rid in result] == []
        assert await count(hub_store, records) == len(all_records)
        for gateway in ("gw-0", "gw-1"):
            progress = await other.gateway_progress(gateway)
            assert (progress.highest_seq, progress.holes) == (400, ())
        assert await count(hub_store, gateway_ranges) == 2
    finally:
        await other.close()


async def test_concurrent_versions_of_one_key_leave_one_active(
    hub_store: SqlHubStore, hub_store_config: HubStoreConfig
) -> None:
    other = await open_hub_store(hub_store_config)
    try:
        key = "product:osaka-plant:ENCL-400:2026-01"
        rows = [footprint(f"pf-{v}", key, v, created_ns=T0 + v) for v in range(1, 13)]
        random.Random(3).shuffle(rows)
        saved = await asyncio.gather(
            *(store.save_footprint(row) for row in rows for store in (hub_store, other))
        )
        assert sum(saved) == len(rows)
        page = await hub_store.list_footprints(None, FootprintFilter(), 0, 100)
        active = [(r.id, r.payload["status"]) for r in page.items if r.status == "Active"]
        assert active == [("pf-12", "Active")]
        assert all(r.payload["status"] == r.status for r in page.items)
        assert await count(hub_store, footprints) == len(rows)
    finally:
        await other.close()


async def test_payloads_round_trip_whatever_their_characters(hub_store: SqlHubStore) -> None:
    odd = {"name": "溶接ロボット №2 — 50 °C", "lone_surrogate": "\ud800", "nul": "a\u0000b"}
    assert await hub_store.add_records([record("r1", **odd)]) == [True]
    (stored,) = await hub_store.lot_records(SITE, "LOT-1")
    assert {key: stored[key] for key in odd} == odd
    row = replace(footprint("pf-1"), payload={"id": "pf-1", "comment": odd["name"]})
    assert await hub_store.save_footprint(row)
    found = await hub_store.footprint("pf-1")
    assert found is not None
    assert found.payload == {"id": "pf-1", "comment": odd["name"], "status": "Active"}
