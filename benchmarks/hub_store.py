"""The hub's store on SQLite and on PostgreSQL, measured through its public API.

Per backend, in one run (so the figures compare like with like on the same machine):

* ``add_records``: records/s in batches as the ingest stores them (one transaction each,
  SQLite ``synchronous=FULL``), and the batch latency;
* ``save_footprint``: footprints/s (one transaction each: the version, its filter terms, the
  older versions deprecated);
* ``list_footprints`` over ``--footprints`` footprints (default 10,000): p50/p99 per query — all
  footprints, one client's products, each filter, filters combined, a deep page;
* ``lot_records``, ``lots_of_product``, ``gateway_progress``: p50/p99.

PostgreSQL runs as a throw-away local server with its default durability (tests/hub/postgres.py:
initdb + pg_ctl, 127.0.0.1), or ``--pg-url`` names an existing database (password from the
environment variable ``--pg-password-env``). SQLite goes in a temporary folder under ``--dir``: put it on the hub's data
disk, as on tmpfs an fsync costs nothing.

    python benchmarks/hub_store.py --records 20000 --footprints 10000
    python benchmarks/hub_store.py --backend postgresql --pg-url postgresql://hub@db/hubbench
    python benchmarks/hub_store.py --quick --json hub_store.json   # CI's smoke run, SQLite only

No bare-library baseline here: the hub's queries have no library doing the same work short of
rewriting the store (bench_hub.py compares the hub end to end with bare paho and Starlette), so
its ``--json`` rows (benchmarks/common.py) carry the store's own figures with no baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from edge_agent.hub.config import HubStoreConfig
from edge_agent.hub.model import FootprintFilter, FootprintRow, IncomingRecord
from edge_agent.hub.store import SqlHubStore, open_hub_store
from tests.hub.postgres import LocalPostgres, postgres_bindir

NS_PER_S = 1_000_000_000
DAY = 86_400 * NS_PER_S
T0 = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z
SITE = "osaka-plant"
PRODUCTS = [f"PRD-{i:03d}" for i in range(50)]
COMPANIES = ["urn:pact:acme.example:company:1", "urn:pact:acme.example:company:2"]
GEOGRAPHY = [("Asia", "JP", "JP-27"), ("Asia", "JP", "JP-13"), ("Europe", "DE", "DE-BY")]
CLASSES = [("urn:pact:cpc:4291",), ("urn:pact:cpc:4299", "urn:pact:hs:7326")]
FILLER = "x" * 1_500  # a record is ~2 kB, a footprint ~5 kB (per-step detail)


def make_record(index: int, gateways: int) -> IncomingRecord:
    lot = f"LOT-{index // 6:06d}"
    kind = "lot" if index % 6 == 5 else "order"
    gateway = f"gw-{index % gateways}"
    payload: dict[str, Any] = {
        "record_id": f"rec-{index}",
        "revision": 1,
        "kind": kind,
        "site_id": SITE,
        "lot_id": lot,
        "product_id": PRODUCTS[(index // 6) % len(PRODUCTS)],
        "end": f"2026-01-{1 + (index // 6) % 28:02d}T12:00:00.000Z",
        "energy_kwh": 4.5821,
        "co2e_kg": 1.98863,
        "meters": FILLER,
    }
    return IncomingRecord(
        record_id=f"rec-{index}" + (f"@{gateway}" if kind == "lot" else ""),
        revision=1,
        kind=kind,
        site_id=SITE,
        lot_id=lot,
        order_id=None if kind == "lot" else f"{lot}-step-{index % 6}",
        gateway_id=gateway,
        gateway_seq=index // gateways + 1,
        payload=payload,
        received_ns=T0 + index * NS_PER_S,
    )


def make_footprint(index: int) -> FootprintRow:
    lot, version = index // 2, 1 + index % 2  # every lot has two versions
    product = PRODUCTS[lot % len(PRODUCTS)]
    start = T0 + (lot % 365) * DAY
    pf_id = f"{index:08d}-0000-4000-8000-000000000000"
    return FootprintRow(
        id=pf_id,
        key=f"lot:{SITE}:LOT-{lot:06d}",
        version=version,
        status="Active",
        product_id=product,
        product_ids=(f"urn:pact:acme.example:product:{product}",),
        company_ids=(COMPANIES[lot % 2],),
        classifications=CLASSES[lot % 2],
        geography=GEOGRAPHY[lot % 3],
        validity_start_ns=start,
        validity_end_ns=start + 365 * DAY,
        created_ns=T0 + index * NS_PER_S,
        preceding_ids=(),
        payload={"id": pf_id, "specVersion": "3.0.0", "status": "Active", "extensions": FILLER * 3},
    )


QUERIES: dict[str, tuple[frozenset[str] | None, FootprintFilter, int]] = {
    "all, first page": (None, FootprintFilter(), 0),
    "one client's 3 products": (frozenset(PRODUCTS[:3]), FootprintFilter(), 0),
    "productIds": (
        None,
        FootprintFilter(product_ids=(f"urn:pact:acme.example:product:{PRODUCTS[7]}",)),
        0,
    ),
    "companyIds": (None, FootprintFilter(company_ids=(COMPANIES[1],)), 0),
    "geography": (None, FootprintFilter(geography=("JP-13",)), 0),
    "classifications": (None, FootprintFilter(classifications=("urn:pact:hs:7326",)), 0),
    "validOn": (None, FootprintFilter(valid_on_ns=T0 + 200 * DAY), 0),
    "status Active": (None, FootprintFilter(status="Active"), 0),
    "combined + 3 products": (
        frozenset(PRODUCTS[:3]),
        FootprintFilter(geography=("JP",), classifications=("urn:pact:cpc:4291",), status="Active"),
        0,
    ),
    "all, offset 9000": (None, FootprintFilter(), 9_000),
}


def p50_p99_ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def percentiles(samples: list[float], into: dict[str, Any] | None = None, key: str = "") -> str:
    p50, p99 = p50_p99_ms(samples)
    if into is not None:
        into[key] = {"p50_ms": p50, "p99_ms": p99}
    return f"p50 {p50:7.2f} ms   p99 {p99:7.2f} ms"


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    await call()  # warm the cache and the statement cache
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def bench(name: str, config: HubStoreConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Print the backend's figures and return them."""
    figures: dict[str, Any] = {}
    store: SqlHubStore = await open_hub_store(config)
    try:
        print(f"\n== {name} ({store.engine.url.render_as_string(hide_password=True)})")
        records = [make_record(i, args.gateways) for i in range(args.records)]
        latencies: list[float] = []
        start = time.perf_counter()
        for first in range(0, len(records), args.batch):
            began = time.perf_counter()
            await store.add_records(records[first : first + args.batch])
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
        figures["add_records_per_s"] = len(records) / elapsed
        print(
            f"add_records: {len(records)} records in batches of {args.batch}: "
            f"{len(records) / elapsed:,.0f} records/s; per batch "
            f"{percentiles(latencies, figures, 'add_records_batch')}"
        )

        rows = [make_footprint(i) for i in range(args.footprints)]
        start = time.perf_counter()
        for row in rows:
            await store.save_footprint(row)
        elapsed = time.perf_counter() - start
        figures["save_footprint_per_s"] = len(rows) / elapsed
        print(f"save_footprint: {len(rows)} footprints: {len(rows) / elapsed:,.0f} footprints/s")

        print(
            f"list_footprints over {len(rows)} footprints, limit {args.limit}, {args.repeat} runs:"
        )
        for label, (visible, filters, offset) in QUERIES.items():
            page = await store.list_footprints(visible, filters, offset, args.limit)
            samples = await timed(
                args.repeat,
                functools.partial(store.list_footprints, visible, filters, offset, args.limit),
            )
            figures.setdefault("list_footprints", {})
            line = percentiles(samples, figures["list_footprints"], label)
            figures["list_footprints"][label]["total"] = page.total
            print(f"  {label:<26} total {page.total:>6}   {line}")

        rng = random.Random(1)
        lots = args.records // 6
        checks: dict[str, Callable[[], Awaitable[Any]]] = {
            "lot_records": lambda: store.lot_records(SITE, f"LOT-{rng.randrange(lots):06d}"),
            "lots_of_product (month)": lambda: store.lots_of_product(
                PRODUCTS[rng.randrange(len(PRODUCTS))], T0, T0 + 31 * DAY
            ),
            "gateway_progress": lambda: store.gateway_progress(
                f"gw-{rng.randrange(args.gateways)}"
            ),
        }
        for label, call in checks.items():
            line = percentiles(await timed(args.repeat, call), figures, label)
            print(f"  {label:<26}                {line}")
    finally:
        await store.close()
    return figures


async def measure(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per backend measured, its figures."""
    out: dict[str, dict[str, Any]] = {}
    if args.backend in ("both", "sqlite"):
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            out["SQLite"] = await bench(
                "SQLite", HubStoreConfig(url=f"sqlite:///{folder}/hub.db"), args
            )
    if args.backend in ("both", "postgresql"):
        if args.pg_url:
            config = HubStoreConfig(url=args.pg_url, password_env=args.pg_password_env)
            out["PostgreSQL"] = await bench("PostgreSQL", config, args)
            return out
        bindir = postgres_bindir()
        if bindir is None:
            print("\nPostgreSQL: not installed (initdb, pg_ctl, postgres), skipped")
            return out
        with LocalPostgres(bindir, durable=True) as server:
            database = await server.create_database()
            out["PostgreSQL"] = await bench(
                "PostgreSQL (local)", HubStoreConfig(url=server.url(database)), args
            )
    return out


NO_BASELINE = " (the store's own figure: no bare-library baseline)"


def contract_rows(measured: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(figure: str, value: float, unit: str) -> None:
        rows.append(
            {"figure": figure + NO_BASELINE, "agent": round(value, 3), "baseline": None,
             "unit": unit, "ratio": None, "goal": "", "met": None}
        )  # fmt: skip

    for backend, figures in measured.items():
        row(f"hub store add_records, {backend}", figures["add_records_per_s"], "records/s")
        row(f"hub store save_footprint, {backend}", figures["save_footprint_per_s"],
            "footprints/s")  # fmt: skip
        for label in ("all, first page", "combined + 3 products"):
            query = figures["list_footprints"][label]
            row(f"hub store list_footprints p50, {label}, {backend}", query["p50_ms"], "ms")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["both", "sqlite", "postgresql"], default="both")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--footprints", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--dir", default=None, help="folder for the SQLite file")
    parser.add_argument("--pg-url", default=None, help="an existing PostgreSQL database")
    parser.add_argument("--pg-password-env", default=None, help="its password's variable")
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run, SQLite")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()
    if args.quick:
        args.backend, args.records, args.footprints, args.repeat = "sqlite", 600, 100, 10
    measured = asyncio.run(measure(args))
    rows = contract_rows(measured)
    write_result(
        args.json,
        benchmark="hub_store",
        title="Hub store on SQLite and PostgreSQL (no bare-library baseline)",
        rows=rows,
        details={
            "records": args.records, "batch": args.batch, "footprints": args.footprints,
            "limit": args.limit, "repeat": args.repeat, "backends": measured,
        },
    )  # fmt: skip
    if not measured or any(row["agent"] <= 0 for row in rows):
        print("FAILED: no backend measured, or a zero measurement", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
