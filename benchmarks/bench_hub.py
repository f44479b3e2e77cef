"""The plant hub end to end, each figure next to its bare-library baseline in the same run.

* **Ingest**: N order records (~2 KB, the agents' MQTT 5 properties) published QoS 1 to a local
  Mosquitto; the hub's ingest (shared subscription, persistent session, commit then PUBACK)
  stores them into SQLite and into PostgreSQL. Baseline: a bare paho QoS 1 subscriber receiving
  the same N messages (no database). Figure: records/s, and the ratio hub / bare.
* **API**: ``GET /3/footprints?limit=100`` (a client seeing every product) and a filtered query,
  over HTTPS on loopback, with ``--footprints`` footprints stored (default 10,000): p50/p99.
  Baseline: a bare Starlette endpoint under the same uvicorn returning a response of the same
  size over the same HTTPS. Figure: latency and the ratio hub / bare.

    python benchmarks/bench_hub.py                    # SQLite and PostgreSQL (if installed)
    python benchmarks/bench_hub.py --records 2000 --footprints 1000 --requests 50   # smoke
    python benchmarks/bench_hub.py --quick --json hub.json   # CI's smoke run, SQLite only

Prints a table and writes ``--json`` (default benchmarks/results/bench_hub.json; a ``--quick``
run writes only where ``--json`` says) in the benchmarks' common shape (benchmarks/common.py):
hub vs bare-library rows on top, every figure under ``details``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import write_result  # noqa: E402
from edge_agent.footprint import build_pact_v3  # noqa: E402
from edge_agent.hub.api import ApiServer, create_app, hash_secret  # noqa: E402
from edge_agent.hub.assemble import footprint_row  # noqa: E402
from edge_agent.hub.config import (  # noqa: E402
    ApiClient,
    HubApiConfig,
    HubConfig,
    HubSite,
    HubStoreConfig,
)
from edge_agent.hub.ingest import RecordIngest  # noqa: E402
from edge_agent.hub.model import HubStore  # noqa: E402
from edge_agent.hub.store import open_hub_store  # noqa: E402
from simulators.broker import LocalMosquitto, free_port  # noqa: E402
from simulators.tls import make_pki  # noqa: E402
from tests.hub.postgres import LocalPostgres, postgres_bindir  # noqa: E402
from tests.unit.footprint_support import info, order_record, worked_example  # noqa: E402

SITE = "osaka-plant"
SECRET = "bench-client-secret-0123456789"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _records(count: int) -> list[bytes]:
    out = []
    for index in range(count):
        record = order_record("laser-cutter", 0.22, lot_id=f"BENCH-{index:06d}")
        record["record_id"] = str(uuid.uuid4())
        record["site_id"] = SITE
        out.append(json.dumps(record).encode())
    return out


def _publish_all(broker: LocalMosquitto, topic: str, payloads: list[bytes]) -> None:
    """QoS 1, the agents' user properties (gateway, seq), at most 100 in flight."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(100)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = []
        for seq, payload in enumerate(payloads, start=1):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = [("kind", "order"), ("gateway", "bench"), ("seq", str(seq))]
            infos.append(client.publish(topic, payload, qos=1, properties=properties))
        for info_ in infos:
            info_.wait_for_publish(timeout=120)
    finally:
        client.disconnect()
        client.loop_stop()


def bare_subscriber_rate(broker: LocalMosquitto, payloads: list[bytes]) -> float:
    """Messages/s a bare paho QoS 1 subscriber receives (the baseline)."""
    done = threading.Event()
    subscribed = threading.Event()
    received = [0, 0.0]
    topic = f"bench/bare/{uuid.uuid4().hex[:6]}"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-bare-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )

    def on_message(*_: Any) -> None:
        received[0] += 1
        if received[0] == len(payloads):
            received[1] = time.perf_counter()
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    subscribed.wait(10)
    started = time.perf_counter()
    _publish_all(broker, topic, payloads)
    done.wait(300)
    client.disconnect()
    client.loop_stop()
    return len(payloads) / (received[1] - started)


async def hub_ingest_rate(broker: LocalMosquitto, store: HubStore, payloads: list[bytes]) -> float:
    config = HubConfig(
        sites=[HubSite(id=SITE, topic_prefix="bench")],
        mqtt={"host": broker.host, "port": broker.port,
              "client_id": f"bench-hub-{uuid.uuid4().hex[:6]}",
              # A group of its own: Mosquitto would hand half the records to the previous
              # run's session, still subscribed (docs/hub.md, "Ingest").
              "share_group": f"bench-{uuid.uuid4().hex[:6]}"},
        product_period=None,
    )  # fmt: skip

    async def ignore(_: object) -> None:
        return None

    ingest = RecordIngest(config, store, ignore)
    await ingest.start()
    await asyncio.wait_for(ingest.link.connected.wait(), 10)
    await asyncio.sleep(0.5)  # subscribed
    task = asyncio.create_task(ingest.run())
    started = time.perf_counter()
    publisher = asyncio.create_task(
        asyncio.to_thread(_publish_all, broker, f"bench/{SITE}/line/laser/lots/x", payloads)
    )
    # Polled (the ingest has no completion event), bounded: a lost record fails the run.
    deadline = time.monotonic() + 300
    while ingest.stored < len(payloads) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if ingest.stored < len(payloads):
        raise RuntimeError(f"only {ingest.stored} of {len(payloads)} records stored in 300 s")
    elapsed = time.perf_counter() - started
    await publisher
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ingest.stop()
    return len(payloads) / elapsed


async def seed_footprints(store: HubStore, count: int) -> None:
    lot, orders = worked_example()
    template = build_pact_v3(lot, orders, info(), created_at=datetime(2026, 2, 1, tzinfo=UTC))
    base = footprint_row(template, "lot:x", 1, "ENCL-400x300", time.time_ns())
    for index in range(count):
        pf_id = str(uuid.uuid4())
        payload = {**template, "id": pf_id}
        await store.save_footprint(
            replace(base, id=pf_id, key=f"lot:{SITE}:L{index}", created_ns=base.created_ns + index,
                    payload=payload)
        )  # fmt: skip


@contextlib.asynccontextmanager
async def running(app: Any, api: HubApiConfig) -> AsyncIterator[ApiServer]:
    server = ApiServer(app, api, log_level="warning")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def latencies(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], n: int
) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get(path, headers=headers)
        response.raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def api_latency(store: HubStore, folder: Path, requests: int) -> dict[str, Any]:
    pki = make_pki(folder / "pki")
    api = HubApiConfig(
        port=free_port(), cert_file=pki.cert_file, key_file=pki.key_file,
        clients=[ApiClient(id="bench", secret_hash=hash_secret(SECRET), products=["ENCL-400x300"])],
    )  # fmt: skip
    app = create_app(api, store, token_key=b"bench token key, 32 bytes long..")
    results: dict[str, Any] = {}
    async with running(app, api) as server:
        base = f"https://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(
            base_url=base, verify=pki.client_context(), timeout=30
        ) as client:
            token = (
                await client.post(
                    "/auth/token", data={"grant_type": "client_credentials"}, auth=("bench", SECRET)
                )
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            first = await client.get("/3/footprints?limit=100", headers=headers)
            body = first.content
            for name, path in (
                ("list 100", "/3/footprints?limit=100"),
                ("filtered", "/3/footprints?limit=100&geography=JP&status=Active"),
            ):
                await latencies(client, path, headers, 5)  # warm
                values = await latencies(client, path, headers, requests)
                results[name] = {
                    "p50_ms": _percentile(values, 0.5),
                    "p99_ms": _percentile(values, 0.99),
                }
    # The same bytes from a bare endpoint under the same server and TLS.
    bare = Starlette(
        routes=[Route("/3/footprints", lambda _: Response(body, media_type="application/json"))]
    )
    async with running(bare, api) as server:
        base = f"https://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(
            base_url=base, verify=pki.client_context(), timeout=30
        ) as client:
            await latencies(client, "/3/footprints", {}, 5)
            values = await latencies(client, "/3/footprints", {}, requests)
            results["bare"] = {
                "p50_ms": _percentile(values, 0.5),
                "p99_ms": _percentile(values, 0.99),
            }
    results["response_bytes"] = len(body)
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    payloads = _records(args.records)
    out: dict[str, Any] = {"records": args.records, "footprints": args.footprints, "backends": {}}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder, LocalMosquitto() as broker:
        bare = bare_subscriber_rate(broker, payloads)
        out["bare_paho_msgs_per_s"] = bare
        bindir = postgres_bindir()
        pg: LocalPostgres | None = None
        if bindir is not None and "postgresql" in args.backends:
            pg = LocalPostgres(bindir)
            pg.start()
        try:
            for name in args.backends:
                if name == "sqlite":
                    url = f"sqlite:///{Path(folder) / 'hub.db'}"
                elif pg is not None:
                    url = pg.url(await pg.create_database())
                else:
                    print("postgresql: no PostgreSQL binaries, skipped", file=sys.stderr)
                    continue
                store = await open_hub_store(HubStoreConfig(url=url))
                try:
                    rate = await hub_ingest_rate(broker, store, payloads)
                    await seed_footprints(store, args.footprints)
                    api = await api_latency(store, Path(folder) / name, args.requests)
                finally:
                    await store.close()
                out["backends"][name] = {
                    "ingest_records_per_s": rate,
                    "ratio_vs_bare": rate / bare,
                    "api": api,
                }
        finally:
            if pg is not None:
                pg.close()
    return out


def contract_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per backend: the hub against the bare library in the same run (run_all.py's rows)."""
    rows: list[dict[str, Any]] = []
    bare = result["bare_paho_msgs_per_s"]

    def row(figure: str, agent: float, baseline: float | None, unit: str) -> None:
        rows.append(
            {"figure": figure, "agent": round(agent, 2),
             "baseline": None if baseline is None else round(baseline, 2), "unit": unit,
             "ratio": round(agent / baseline, 3) if baseline else None, "goal": "",
             "met": None}
        )  # fmt: skip

    for name, figures in result["backends"].items():
        api = figures["api"]
        over = f"over {result['footprints']:,} footprints, {name}"
        row(f"hub ingest, ~2 KB order records committed then acknowledged, {name} "
            "(baseline: bare paho QoS 1 subscriber, no database)",
            figures["ingest_records_per_s"], bare, "records/s")  # fmt: skip
        for q in ("p50", "p99"):
            row(f"GET /3/footprints?limit=100 {q} {over} (baseline: the same bytes from a bare "
                "Starlette route, same uvicorn and TLS)",
                api["list 100"][f"{q}_ms"], api["bare"][f"{q}_ms"], "ms")  # fmt: skip
            row(f"GET /3/footprints?limit=100&geography=JP&status=Active {q} {over} "
                "(no bare equivalent)", api["filtered"][f"{q}_ms"], None, "ms")  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--footprints", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--dir", default=None, help="folder for the SQLite file (its disk)")
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run on SQLite")
    parser.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/bench_hub.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.records, args.footprints, args.requests, args.backends = 300, 100, 15, ["sqlite"]
    elif args.json is None:
        args.json = REPO / "benchmarks/results/bench_hub.json"
    result = asyncio.run(run(args))
    print(f"bare paho QoS 1 subscriber: {result['bare_paho_msgs_per_s']:,.0f} msgs/s")
    for name, figures in result["backends"].items():
        api = figures["api"]
        print(
            f"{name:<10} ingest {figures['ingest_records_per_s']:,.0f} records/s "
            f"({figures['ratio_vs_bare']:.2f} of bare); GET /3/footprints?limit=100 over "
            f"{result['footprints']:,} footprints: p50 {api['list 100']['p50_ms']:.1f} ms, "
            f"p99 {api['list 100']['p99_ms']:.1f} ms; filtered p50 {api['filtered']['p50_ms']:.1f} "
            f"ms p99 {api['filtered']['p99_ms']:.1f} ms; bare endpoint, same {api['response_bytes']:,} "
            f"bytes: p50 {api['bare']['p50_ms']:.1f} ms p99 {api['bare']['p99_ms']:.1f} ms "
            f"(p50 ratio {api['list 100']['p50_ms'] / api['bare']['p50_ms']:.1f})"
        )
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    rows = contract_rows(result)
    write_result(
        args.json,
        benchmark="hub",
        title="Plant hub: ingest and API vs bare paho / bare Starlette",
        rows=rows,
        details=result,
    )
    if not result["backends"] or any(
        row["agent"] <= 0 or (row["baseline"] is not None and row["baseline"] <= 0) for row in rows
    ):
        print("FAILED: no backend measured, or a zero measurement", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
