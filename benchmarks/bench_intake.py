"""MES intake throughput: a flood of QoS 1 messages, most of them junk, into the real agent.

A publisher process offers ``--rate`` messages/s for ``--seconds`` to a local Mosquitto, one in
five valid by default (``--valid-share``): realistic start/stop pairs with current timestamps on
the configured equipment and unique order ids; the rest a mix of what a misbehaving MES sends —
bad JSON, unknown equipment, an ``equipment_id`` with whitespace around it, ``ts`` out of range,
oversize payloads, deep nesting, missing fields. Each valid event carries ``sent_ns``.

The agent (``edge_agent.app.Agent``, as ``edge-agent run`` builds it: SQLite store, order engine,
read-on-event against simulated Modbus meters in their own process, finaliser, outbox publisher,
dead letters) runs in this process, so its CPU figure is the agent's alone. Then the baseline —
the bare libraries doing the same work: paho-mqtt with manual acks, ``json.loads`` and the
plain checks a consumer would write, one SQLite transaction per batch (``synchronous=FULL``,
WAL), a dead letter per rejection (QoS 1, not awaited), each message acknowledged after its
batch's commit — takes the same stream from the same broker.

Printed per rate: messages/s sustained (every message committed or counted as a rejection,
from the first publish to the last commit), CPU µs per message (the process's CPU from the first
publish until every message is committed and every dead letter published), p50/p99 latency from
publish to commit, the agent/baseline ratios, and how long the agent's finaliser then needed to
turn the stopped orders into records. Checked: every valid event stored (none lost), the
rejection counts per code equal to what was sent, Mosquitto's
``$SYS/broker/publish/messages/dropped`` unchanged (not waited for with ``--quick``). ``--json``
writes the benchmarks' common result (benchmarks/common.py: agent/baseline rows, the goal of
≥ 1,000 msg/s) with every figure under ``details``, CPU per thread included (event loop, paho's
network thread, aiosqlite's thread); ``--profile`` writes a cProfile of the event
loop; ``--starts-only`` makes every valid event the start of a new order (nothing to finalise:
the intake alone).

    python benchmarks/bench_intake.py --rate 1000 2000 --seconds 10 --json intake.json
    python benchmarks/bench_intake.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import multiprocessing
import queue
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from benchmarks.common import write_result
from edge_agent.app import Agent
from edge_agent.config import AgentConfig, parse_config
from edge_agent.engine import BatchResult
from edge_agent.mes.events import OrderEvent
from edge_agent.publish.topics import mes_topic
from simulators.broker import LocalMosquitto
from simulators.mes import rfc3339

NS_PER_S = 1_000_000_000
ROOT = Path(__file__).resolve().parents[1]
MAX_PAYLOAD_BYTES = 64 * 1024  # the agent's default mes.max_payload_bytes; the baseline's bound
BATCH_MAX_MESSAGES = 500  # the agent's default mes.batch_max_messages; the baseline's too
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
CATCH_UP_TIMEOUT_S = 1800.0  # the finaliser's backlog after a flood (agent.stop() waits for it)
SYS_INTERVAL_S = 10.0  # Mosquitto's default sys_interval: $SYS values are republished this often

# The invalid share, by kind (20 slots, cycled): what each kind is and the agent's code for it.
INVALID_PATTERN = (
    ("bad_json",) * 4
    + ("unknown_equipment",) * 4
    + ("id_whitespace",) * 3
    + ("ts_out_of_range",) * 3
    + ("missing_field",) * 3
    + ("too_deep",) * 2
    + ("payload_too_large",)
)
AGENT_CODE = {"id_whitespace": "invalid_id"}  # other kinds are named after the agent's code


# -- the message stream (publisher side) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamPlan:
    tag: str  # makes event and order ids unique per run
    host: str
    port: int
    topic: str
    rate: float
    seconds: float
    valid_share: float
    starts_only: bool  # every valid event starts a new order: no stops, nothing to finalise
    equipment: tuple[str, ...]

    @property
    def total(self) -> int:
        return round(self.rate * self.seconds)

    def is_valid(self, index: int) -> bool:
        # Evenly spread and exact: floor(total × share) valid messages in all.
        return int((index + 1) * self.valid_share) > int(index * self.valid_share)


def valid_event(plan: StreamPlan, number: int, now_ns: int) -> dict[str, Any]:
    """The number-th valid event: per equipment, orders one after the other, start then stop."""
    equipment = plan.equipment[number % len(plan.equipment)]
    step = number // len(plan.equipment) * (1 if not plan.starts_only else 2)
    order = step // 2
    event: dict[str, Any] = {
        "event_id": f"{plan.tag}-ev-{number}",
        "type": "start" if step % 2 == 0 else "stop",
        "ts": rfc3339(now_ns),
        "order_id": f"{plan.tag}-{equipment}-o{order}",
        "lot_id": f"{plan.tag}-lot-{order // 20}",
        "equipment_id": equipment,
        "sent_ns": now_ns,
    }
    if event["type"] == "start":
        event["product_id"] = "ENC-400-GREY"
    else:
        event["quantity_good"] = 24
        event["quantity_scrap"] = 1
    return event


def invalid_payload(plan: StreamPlan, number: int, now_ns: int) -> tuple[str, bytes]:
    """The number-th invalid message: (kind, payload)."""
    kind = INVALID_PATTERN[number % len(INVALID_PATTERN)]
    variant = (number // len(INVALID_PATTERN)) % 2
    equipment = plan.equipment[number % len(plan.equipment)]
    base: dict[str, Any] = {
        "event_id": f"{plan.tag}-bad-{number}",
        "type": "start",
        "ts": rfc3339(now_ns),
        "order_id": f"{plan.tag}-bad-o{number}",
        "lot_id": f"{plan.tag}-bad-lot",
        "equipment_id": equipment,
        "product_id": "ENC-400-GREY",
    }
    if kind == "bad_json":
        text = json.dumps(base)
        # a message cut short, or a line from an MES misconfigured to send text
        body = (
            text[: len(text) * 2 // 3] if variant == 0 else f"START;{base['order_id']};{equipment}"
        )
        return kind, body.encode()
    if kind == "unknown_equipment":
        base["equipment_id"] = f"{equipment.split('-')[0]}-99"
    elif kind == "id_whitespace":
        base["equipment_id"] = f"{equipment} " if variant == 0 else f"\t{equipment}"
    elif kind == "ts_out_of_range":
        old = datetime.now(UTC) - timedelta(days=40)
        base["ts"] = "9999-12-31T23:59:59Z" if variant == 0 else old.isoformat()
    elif kind == "missing_field":
        if variant == 0:
            base.update(type="stop", quantity_scrap=0)  # a stop without quantity_good
            del base["product_id"]
        else:
            del base["ts"]
    elif kind == "too_deep":
        if variant == 0:  # the poison of issue 7 (RecursionError in json.loads)
            return kind, b"[" * 5_000 + b"]" * 5_000
        return kind, b'{"a":' * 40 + b"1" + b"}" * 40  # merely deeper than the bound
    elif kind == "payload_too_large":
        base["note"] = "x" * (MAX_PAYLOAD_BYTES + 4_000)
    return kind, json.dumps(base).encode()


def publisher_main(plan: StreamPlan, conn: Connection) -> None:
    """The MES (a separate process): connect, wait for "go", publish at the rate, report."""
    acked = [0]
    connected = threading.Event()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-mes-{plan.tag}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)  # unbounded: the schedule, not paho, sets the pace
    client.on_connect = lambda *_: connected.set()

    def on_publish(*_: Any) -> None:
        acked[0] += 1  # paho's thread only

    client.on_publish = on_publish
    client.connect(plan.host, plan.port, keepalive=30)
    client.loop_start()
    connected.wait(10)
    conn.send("ready")
    conn.recv()
    expected: Counter[str] = Counter()
    valid = invalid = 0
    lag_s = 0.0
    start = time.monotonic()
    first_ns = time.time_ns()
    for index in range(plan.total):
        due = start + index / plan.rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            lag_s = max(lag_s, -wait)
        now_ns = time.time_ns()
        if plan.is_valid(index):
            payload = json.dumps(valid_event(plan, valid, now_ns)).encode()
            valid += 1
        else:
            kind, payload = invalid_payload(plan, invalid, now_ns)
            expected[AGENT_CODE.get(kind, kind)] += 1
            invalid += 1
        client.publish(plan.topic, payload, qos=1)
    last_ns = time.time_ns()
    deadline = time.monotonic() + 60
    while acked[0] < plan.total and time.monotonic() < deadline:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    conn.send(
        {
            "published": plan.total,
            "broker_acked": acked[0],
            "valid": valid,
            "invalid_by_code": dict(expected),
            "first_ns": first_ns,
            "last_ns": last_ns,
            "max_lag_s": lag_s,
        }
    )


class Publisher:
    """The publisher process, ready to go."""

    def __init__(self, plan: StreamPlan) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=publisher_main, args=(plan, child), daemon=True)
        self._process.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            raise RuntimeError("the publisher process did not connect to the broker")

    def go(self) -> None:
        self._conn.send("go")

    def result(self, timeout_s: float) -> dict[str, Any]:
        if not self._conn.poll(timeout_s):
            raise RuntimeError("the publisher process did not report")
        result: dict[str, Any] = self._conn.recv()
        self._process.join(10)
        return result


# -- measuring ----------------------------------------------------------------------------------


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name and id."""
    times: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            times[f"{thread.name}#{thread.ident}"] = time.clock_gettime(clock)
        except OSError:  # the thread ended meanwhile
            continue
    return times


def thread_groups(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, per kind of thread."""
    groups: dict[str, float] = {}
    for key, seconds in after.items():
        name = key.split("#")[0]
        if name == "MainThread":
            group = "event loop (MainThread)"
        elif name.startswith("paho-mqtt-client-"):
            group = f"paho {name.removeprefix('paho-mqtt-client-')}"
        elif "connection_worker" in name or "aiosqlite" in name:
            group = "aiosqlite"
        else:
            group = name.rstrip("0123456789_ ")
        groups[group] = groups.get(group, 0.0) + seconds - before.get(key, 0.0)
    ranked = sorted(groups.items(), key=lambda item: -item[1])
    return {group: round(seconds, 3) for group, seconds in ranked}


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else 0.0


def latency_trend(sent_and_ms: Sequence[tuple[int, float]]) -> dict[str, float]:
    """p50 latency of the events sent in the first and in the last quarter of the run: equal
    when the consumer keeps up, growing when a backlog builds."""
    ordered = [ms for _, ms in sorted(sent_and_ms)]
    quarter = max(1, len(ordered) // 4)
    return {
        "p50_first_quarter_ms": round(percentile(ordered[:quarter], 0.5), 1),
        "p50_last_quarter_ms": round(percentile(ordered[-quarter:], 0.5), 1),
    }


class DroppedWatch:
    """Mosquitto's dropped-message counter, from a subscription kept for the whole run."""

    def __init__(self, host: str, port: int, *, wait_for_settle: bool = True) -> None:
        self.value: int | None = None
        self._wait_for_settle = wait_for_settle
        self.updated = 0.0  # monotonic
        self._client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda client, *_: client.subscribe(DROPPED_TOPIC, qos=0)
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        deadline = time.monotonic() + 10
        while self.value is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def _on_message(self, _: paho.Client, __: Any, message: paho.MQTTMessage) -> None:
        self.value = int(message.payload)
        self.updated = time.monotonic()

    def settled(self, since: float) -> int | None:
        """The counter once Mosquitto has republished it after ``since`` (it does so every
        sys_interval, only when it changed); None without waiting in a quick run."""
        if not self._wait_for_settle:
            return None
        time.sleep(max(0.0, since + SYS_INTERVAL_S + 1.5 - time.monotonic()))
        return self.value

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class PhaseResult:
    who: str
    offered: int
    offered_per_s: float
    publisher_max_lag_ms: float
    sustained_per_s: float
    cpu_us_per_message: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    valid_sent: int
    valid_stored: int
    valid_lost: int
    rejected_expected: int
    rejected_counted: int
    rejection_counts_match: bool
    dead_letters_sent: int
    dead_letters_lost: int
    broker_dropped: int | None
    batches: int
    extra: dict[str, Any] = field(default_factory=dict)


# -- the agent ----------------------------------------------------------------------------------


class Meters:
    """Simulated Modbus meters in their own process (their CPU is not the agent's)."""

    def __init__(self, count: int, folder: Path) -> None:
        ports_file = folder / "meter-ports.json"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "simulators.modbus_meters", "--meters", str(count),
             "--no-wander", "--ports-file", str(ports_file)],
            stdout=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        self.ports: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while not self.ports:  # written once every meter listens
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Modbus meter simulator did not start")
            time.sleep(0.1)
            try:
                self.ports = json.loads(ports_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def agent_config(
    broker: LocalMosquitto, ports: Mapping[str, int], folder: Path, tag: str
) -> AgentConfig:
    equipment = [f"station-{index + 1:02d}" for index in range(len(ports))]
    return parse_config(
        {
            "site": {"id": "bench"},
            "meters": [
                {"id": meter_id, "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port,
                 "profile": "sdm630", "interval_s": 1.0, "timeout_s": 0.5, "retries": 1}
                for meter_id, port in sorted(ports.items())
            ],
            "equipment": [
                {"id": equipment_id, "meters": [meter_id], "max_power_kw": 50,
                 "final_timeout_s": 10}
                for equipment_id, meter_id in zip(equipment, sorted(ports), strict=True)
            ],
            "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": "bench",
                     "client_id": f"edge-agent-{tag}"},
            "store": {"path": str(folder / f"agent-{tag}.db")},
            "emission_factors": {
                "electricity": {"value": 0.45, "unit": "kgCO2e/kWh", "source": "bench",
                                "version": "1"}
            },
        },
        folder,
    )  # fmt: skip


class CommitClock:
    """Wraps the engine's handle_batch: when each batch committed, and what it held."""

    def __init__(self) -> None:
        self.committed_ns: dict[str, int] = {}  # event_id -> commit time
        self.messages = 0  # events + parse rejections committed
        self.last_ns = 0

    def wrap(self, handle_batch: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(
            events: Sequence[OrderEvent], rejected: Mapping[str, int] | None = None
        ) -> BatchResult:
            result: BatchResult = await handle_batch(events, rejected)
            now_ns = time.time_ns()
            for event in events:
                self.committed_ns[event.event_id] = now_ns
            self.messages += len(events) + sum((rejected or {}).values())
            self.last_ns = now_ns
            return result

        return timed


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def run_agent(
    plan: StreamPlan,
    config: AgentConfig,
    watch: DroppedWatch,
    settle_s: float,
    profile_path: Path | None = None,
) -> PhaseResult:
    publisher = await asyncio.to_thread(Publisher, plan)
    agent = Agent(config)
    await agent.start()
    intake, engine, store = agent.intake, agent.engine, agent.store
    assert intake is not None
    assert engine is not None
    assert store is not None
    await asyncio.wait_for(intake.link.connected.wait(), 10)
    clock = CommitClock()
    setattr(engine, "handle_batch", clock.wrap(engine.handle_batch))  # noqa: B010
    await asyncio.sleep(settle_s)  # subscribed, every meter polled once: a plant at work
    dropped_before = watch.value
    profiler = cProfile.Profile() if profile_path is not None else None
    threads0 = thread_cpu_s()
    cpu0 = cpu_s()
    if profiler is not None:
        profiler.enable()
    waiting = [0]  # the most messages delivered to the agent and not yet taken into a batch

    async def watch_queue() -> None:
        while True:
            waiting[0] = max(waiting[0], intake.link.messages.qsize())
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_queue())
    publisher.go()
    sent = await asyncio.to_thread(publisher.result, plan.seconds * 20 + 120)
    if sent["broker_acked"] != plan.total:
        raise RuntimeError(f"the broker acknowledged {sent['broker_acked']} of {plan.total}")
    invalid = plan.total - sent["valid"]
    done = await wait_until(lambda: clock.messages >= plan.total, 120)
    await wait_until(
        lambda: (
            intake.dead_letters_sent + intake.dead_letters_lost >= invalid
            and intake.dead_letters_pending == 0
        ),
        60,
    )
    cpu1 = cpu_s()
    threads1 = thread_cpu_s()
    watcher.cancel()
    if profiler is not None and profile_path is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
    finished = time.monotonic()
    caught_up = await wait_until(lambda: engine.pending == (0, 0), CATCH_UP_TIMEOUT_S)
    finaliser_s = time.monotonic() - finished
    cpu2 = cpu_s()
    counted = await store.rejected_counts()
    extra = {
        "intake_accepted": intake.accepted,
        "intake_held": intake.held,
        "intake_duplicates": intake.duplicates,
        "intake_rejected": dict(intake.rejected),
        "order_records": engine.records_enqueued,
        "finaliser_catch_up_s": round(finaliser_s, 2) if caught_up else None,
        "cpu_us_per_message_with_finaliser": (cpu2 - cpu0) / plan.total * 1e6,
        "all_processed": done,
        "max_messages_queued_in_agent": waiting[0],
        "cpu_s_by_thread": thread_groups(threads0, threads1),
        "cpu_s_by_thread_finaliser": thread_groups(threads1, thread_cpu_s()),
    }
    batches, letters_sent, letters_lost = (
        intake.batches,
        intake.dead_letters_sent,
        intake.dead_letters_lost,
    )
    await agent.stop()
    dropped_after = await asyncio.to_thread(watch.settled, finished)
    with contextlib.closing(sqlite3.connect(config.store.path)) as db:
        rows = db.execute("SELECT event_id, payload, received_ns FROM events").fetchall()
    stored = {str(row[0]): json.loads(row[1]) for row in rows}
    sent_and_ms = [
        (body["sent_ns"], (clock.committed_ns[event_id] - body["sent_ns"]) / 1e6)
        for event_id, body in stored.items()
        if event_id in clock.committed_ns
    ]
    latencies_ms = [ms for _, ms in sent_and_ms]
    extra.update(latency_trend(sent_and_ms))
    admitted_ms = [(int(row[2]) - json.loads(row[1])["sent_ns"]) / 1e6 for row in rows]
    extra["publish_to_admission_p50_ms"] = (
        round(statistics.median(admitted_ms), 2) if rows else None
    )
    expected_ids = {f"{plan.tag}-ev-{number}" for number in range(sent["valid"])}
    return PhaseResult(
        who="agent",
        offered=plan.total,
        offered_per_s=plan.total / ((sent["last_ns"] - sent["first_ns"]) / NS_PER_S),
        publisher_max_lag_ms=sent["max_lag_s"] * 1000,
        sustained_per_s=clock.messages / ((clock.last_ns - sent["first_ns"]) / NS_PER_S),
        cpu_us_per_message=(cpu1 - cpu0) / plan.total * 1e6,
        latency_p50_ms=percentile(latencies_ms, 0.50),
        latency_p99_ms=percentile(latencies_ms, 0.99),
        latency_max_ms=max(latencies_ms, default=0.0),
        valid_sent=sent["valid"],
        valid_stored=len(expected_ids & stored.keys()),
        valid_lost=len(expected_ids - stored.keys()),
        rejected_expected=invalid,
        rejected_counted=sum(counted.values()),
        rejection_counts_match=counted == sent["invalid_by_code"],
        dead_letters_sent=letters_sent,
        dead_letters_lost=letters_lost,
        broker_dropped=None
        if dropped_after is None or dropped_before is None
        else dropped_after - dropped_before,
        batches=batches,
        extra={**extra, "rejected_by_code": counted, "sent_by_code": sent["invalid_by_code"],
               "unexpected_events": len(stored.keys() - expected_ids)},
    )  # fmt: skip


# -- the baseline: the bare libraries doing the same work ---------------------------------------


REQUIRED = {
    "start": ("event_id", "ts", "order_id", "lot_id", "equipment_id", "product_id"),
    "stop": ("event_id", "ts", "order_id", "lot_id", "equipment_id", "quantity_good",
             "quantity_scrap"),
}  # fmt: skip


def baseline_check(payload: bytes, known: Collection[str], now_ns: int) -> tuple[Any, str | None]:
    """What a plain consumer checks: (parsed, None) or (None, why not)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, "payload_too_large"
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None, "bad_json"
    if not isinstance(data, dict):
        return None, "not_an_object"
    if data.get("equipment_id") not in known:
        return None, "unknown_equipment"
    if any(name not in data for name in REQUIRED.get(str(data.get("type")), ("type",))):
        return None, "missing_field"
    try:
        ts = datetime.fromisoformat(data["ts"])
        age_s = (now_ns - ts.timestamp() * NS_PER_S) / NS_PER_S
    except (TypeError, ValueError, OverflowError):
        return None, "invalid_field"
    if not -86400 <= age_s <= 30 * 86400:
        return None, "ts_out_of_range"
    return data, None


def run_baseline(
    plan: StreamPlan, db_path: Path, dead_letter_topic: str, watch: DroppedWatch, settle_s: float
) -> PhaseResult:
    publisher = Publisher(plan)
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE events (event_id TEXT PRIMARY KEY, payload TEXT NOT NULL, "
               "received_ns INTEGER NOT NULL)")  # fmt: skip
    db.execute("CREATE TABLE rejected (reason TEXT PRIMARY KEY, count INTEGER NOT NULL)")
    known = frozenset(plan.equipment)
    inbox: queue.Queue[paho.MQTTMessage] = queue.Queue()
    subscribed = threading.Event()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"baseline-{plan.tag}",
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=True,
    )
    client.on_connect = lambda c, *_: c.subscribe(plan.topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, message: inbox.put(message)
    letters_acked = [0]

    def on_publish(*_: Any) -> None:
        letters_acked[0] += 1  # paho's thread only

    client.on_publish = on_publish
    client.connect(plan.host, plan.port, keepalive=30)
    client.loop_start()
    subscribed.wait(10)
    sent_and_ms: list[tuple[int, float]] = []
    state = {"messages": 0, "batches": 0, "last_ns": 0, "letters": 0}
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            try:
                batch = [inbox.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < BATCH_MAX_MESSAGES:
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            now_ns = time.time_ns()
            rows, rejected, letters = [], Counter[str](), []
            for message in batch:
                data, why = baseline_check(bytes(message.payload), known, now_ns)
                if why is None:
                    rows.append(
                        (data["event_id"], message.payload.decode(), now_ns, data["sent_ns"])
                    )
                else:
                    rejected[why] += 1
                    letters.append(json.dumps({
                        "reason": why, "code": why, "topic": message.topic,
                        "rejected_at": datetime.now(UTC).isoformat(),
                        "payload": message.payload[:MAX_PAYLOAD_BYTES].decode(errors="replace"),
                    }).encode())  # fmt: skip
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?)", [row[:3] for row in rows]
            )
            db.executemany(
                "INSERT INTO rejected VALUES (?, ?) "
                "ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
                list(rejected.items()),
            )
            db.execute("COMMIT")
            done_ns = time.time_ns()
            sent_and_ms.extend((row[3], (done_ns - row[3]) / 1e6) for row in rows)
            for message in batch:
                client.ack(message.mid, message.qos)
            for letter in letters:
                client.publish(dead_letter_topic, letter, qos=1)
            state["letters"] += len(letters)
            state["messages"] += len(batch)
            state["batches"] += 1
            state["last_ns"] = done_ns

    worker = threading.Thread(target=consume, name="baseline-consumer")
    worker.start()
    time.sleep(settle_s)
    dropped_before = watch.value
    threads0 = thread_cpu_s()
    cpu0 = cpu_s()
    publisher.go()
    sent = publisher.result(plan.seconds * 20 + 120)
    if sent["broker_acked"] != plan.total:
        raise RuntimeError(f"the broker acknowledged {sent['broker_acked']} of {plan.total}")
    deadline = time.monotonic() + 120
    while state["messages"] < plan.total and time.monotonic() < deadline:
        time.sleep(0.02)
    while letters_acked[0] < state["letters"] and time.monotonic() < deadline:
        time.sleep(0.02)  # dead letters still on their way to the broker
    cpu1 = cpu_s()
    threads1 = thread_cpu_s()
    finished = time.monotonic()
    stop.set()
    worker.join()
    client.disconnect()
    client.loop_stop()
    counted = dict(db.execute("SELECT reason, count FROM rejected").fetchall())
    stored = {str(row[0]) for row in db.execute("SELECT event_id FROM events")}
    db.close()
    dropped_after = watch.settled(finished)
    expected_ids = {f"{plan.tag}-ev-{number}" for number in range(sent["valid"])}
    latencies_ms = [ms for _, ms in sent_and_ms]
    invalid = plan.total - sent["valid"]
    return PhaseResult(
        who="baseline",
        offered=plan.total,
        offered_per_s=plan.total / ((sent["last_ns"] - sent["first_ns"]) / NS_PER_S),
        publisher_max_lag_ms=sent["max_lag_s"] * 1000,
        sustained_per_s=state["messages"] / ((state["last_ns"] - sent["first_ns"]) / NS_PER_S),
        cpu_us_per_message=(cpu1 - cpu0) / plan.total * 1e6,
        latency_p50_ms=percentile(latencies_ms, 0.50),
        latency_p99_ms=percentile(latencies_ms, 0.99),
        latency_max_ms=max(latencies_ms, default=0.0),
        valid_sent=sent["valid"],
        valid_stored=len(expected_ids & stored),
        valid_lost=len(expected_ids - stored),
        rejected_expected=invalid,
        rejected_counted=sum(counted.values()),
        rejection_counts_match=sum(counted.values()) == invalid,
        dead_letters_sent=state["letters"],
        dead_letters_lost=0,
        broker_dropped=None
        if dropped_after is None or dropped_before is None
        else dropped_after - dropped_before,
        batches=state["batches"],
        extra={
            "rejected_by_reason": counted,
            "cpu_s_by_thread": thread_groups(threads0, threads1),
            **latency_trend(sent_and_ms),
        },
    )


# -- the run ------------------------------------------------------------------------------------


def plan_for(
    broker: LocalMosquitto,
    topic: str,
    rate: float,
    args: argparse.Namespace,
    equipment: Sequence[str],
) -> StreamPlan:
    return StreamPlan(
        tag=uuid.uuid4().hex[:8],
        host=broker.host,
        port=broker.port,
        topic=topic,
        rate=rate,
        seconds=args.seconds,
        valid_share=args.valid_share,
        starts_only=args.starts_only,
        equipment=tuple(equipment),
    )


def print_row(label: str, result: PhaseResult) -> None:
    print(
        f"{label:>6}  {result.who:8}  {result.offered_per_s:8.0f}  {result.sustained_per_s:9.0f}"
        f"  {result.cpu_us_per_message:8.0f}  {result.latency_p50_ms:7.1f}  {result.latency_p99_ms:7.1f}"
        f"  {result.valid_lost:4d}  {'yes' if result.rejection_counts_match else 'NO':>6}"
        f"  {result.broker_dropped if result.broker_dropped is not None else '?':>7}",
        flush=True,
    )


def print_details(agent: PhaseResult, baseline: PhaseResult) -> None:
    extra = agent.extra
    print(
        f"        agent: {agent.batches} batches, at most {extra['max_messages_queued_in_agent']} "
        f"messages waiting in its queue; dead letters {agent.dead_letters_sent} sent, "
        f"{agent.dead_letters_lost} lost; {extra['order_records']} order records, the "
        f"finaliser done {extra['finaliser_catch_up_s']} s after the last commit\n"
        f"        p50 latency of the first -> last quarter's events: agent "
        f"{extra['p50_first_quarter_ms']} -> {extra['p50_last_quarter_ms']} ms, baseline "
        f"{baseline.extra['p50_first_quarter_ms']} -> {baseline.extra['p50_last_quarter_ms']} ms;"
        f" publisher max lag {max(agent.publisher_max_lag_ms, baseline.publisher_max_lag_ms):.0f}"
        " ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[1000.0],
        help="messages/s offered (several: one run each)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--valid-share", type=float, default=0.2)
    parser.add_argument(
        "--starts-only",
        action="store_true",
        help="valid events are starts of new orders only (no stops: the intake without finalising)",
    )
    parser.add_argument("--equipment", type=int, default=4, help="equipment, one meter each")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="a 2 s smoke run")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the agent's event loop into this file"
    )
    parser.add_argument("--log-level", default="info", help="the agent's log level")
    args = parser.parse_args()  # fmt: skip
    settle_s = 1.5
    if args.quick:
        args.seconds, settle_s = 2.0, 1.0
    if not 0 < args.valid_share <= 1:
        parser.error("--valid-share must lie in (0, 1]")
    results: list[dict[str, Any]] = []
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        logging.basicConfig(
            filename=folder / "agent.log",
            level=getattr(logging, args.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        meters = Meters(args.equipment, folder)
        ports = meters.ports
        try:
            # A quick run does not wait the ~11 s per phase for Mosquitto's $SYS counter.
            watch = DroppedWatch(broker.host, broker.port, wait_for_settle=not args.quick)
            print(
                f"{args.seconds:g} s per run, {args.valid_share:.0%} valid "
                f"({'starts of new orders' if args.starts_only else 'start/stop pairs'}) on "
                f"{args.equipment} equipment; latency = publish -> commit"
            )
            print("offered  who       offered/s  sustained/s  CPU µs/msg  p50 ms  p99 ms  lost"
                  "  counts  dropped")  # fmt: skip
            for rate in args.rate:
                tag = uuid.uuid4().hex[:6]
                config = agent_config(broker, ports, folder, tag)
                equipment = [item.id for item in config.equipment]
                agent_plan = plan_for(broker, mes_topic(config), rate, args, equipment)
                agent = asyncio.run(run_agent(agent_plan, config, watch, settle_s, args.profile))
                print_row(f"{rate:g}", agent)
                base_plan = plan_for(broker, f"bench/baseline-{tag}/mes", rate, args, equipment)
                baseline = run_baseline(
                    base_plan, folder / f"baseline-{tag}.db",
                    f"bench/baseline-{tag}/dead-letter", watch, settle_s,
                )  # fmt: skip
                print_row("", baseline)
                ratio = {
                    "sustained": agent.sustained_per_s / baseline.sustained_per_s,
                    "cpu_per_message": agent.cpu_us_per_message / baseline.cpu_us_per_message,
                    "latency_p50": agent.latency_p50_ms / max(baseline.latency_p50_ms, 1e-3),
                    "latency_p99": agent.latency_p99_ms / max(baseline.latency_p99_ms, 1e-3),
                }
                print(
                    f"{'':>6}  {'ratio':8}  {'':8}  {ratio['sustained']:8.2f}×"
                    f"  {ratio['cpu_per_message']:7.1f}×  {ratio['latency_p50']:6.1f}×"
                    f"  {ratio['latency_p99']:6.1f}×"
                )
                print_details(agent, baseline)
                results.append(
                    {"rate": rate, "seconds": args.seconds, "valid_share": args.valid_share,
                     "equipment": args.equipment, "agent": asdict(agent),
                     "baseline": asdict(baseline), "ratio": ratio}
                )  # fmt: skip
            watch.close()
        finally:
            meters.stop()
    write_result(
        args.json,
        benchmark="intake",
        title="MES intake: the agent vs bare paho + sqlite3 on the same stream",
        rows=contract_rows(results),
        details={"runs": results, "goal_rule": GOAL_RULE},
    )
    failed = [r["rate"] for r in results if r["agent"]["valid_lost"] or r["baseline"]["valid_lost"]
              or not r["agent"]["rejection_counts_match"]
              or not r["baseline"]["rejection_counts_match"]
              or not r["agent"]["extra"]["all_processed"]
              or min(r["agent"]["sustained_per_s"], r["baseline"]["sustained_per_s"],
                     r["agent"]["cpu_us_per_message"], r["baseline"]["cpu_us_per_message"]) <= 0
              ]  # fmt: skip
    if failed or not results:
        print(
            f"CHECK FAILED at {failed} msg/s: valid events lost, rejection counts differ, "
            "messages left unprocessed or nothing measured"
        )
        raise SystemExit(1)


GOAL_SUSTAINED = "≥ 1,000 msg/s sustained"
# Sustained runs from the first publish to the last commit, so it stays a little under the
# offered rate however fast the consumer: keeping within 3 % of 1,000+ msg/s offered meets it.
# A run shorter than 10 s (--quick) is too short to call anything sustained, and where the
# baseline falls behind too the machine is the limit, not the agent: neither judges the goal.
GOAL_RULE = (
    "met when ≥ 1,000 msg/s are offered for ≥ 10 s and the agent sustains ≥ 97 % of the offer;"
    " not judged (null) in shorter runs or when the baseline sustains less than that too"
)


def contract_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows run_all.py gathers: per offered rate, agent vs baseline in the same run."""
    rows: list[dict[str, Any]] = []
    for run in results:
        agent, baseline, rate = run["agent"], run["baseline"], run["rate"]
        offered = f"{rate:,.0f} msg/s offered"
        kept_up = agent["sustained_per_s"] >= 0.97 * rate
        machine_limited = baseline["sustained_per_s"] < 0.97 * rate and not kept_up
        judged = rate >= 1000 and run["seconds"] >= 10 and not machine_limited
        met = kept_up if judged else None
        for figure, key, unit, goal, is_met in (
            (f"MES messages sustained, {offered}", "sustained_per_s", "msg/s", GOAL_SUSTAINED,
             met),
            (f"CPU per MES message, {offered}", "cpu_us_per_message", "µs/msg", "", None),
            (f"latency publish → commit p50, {offered}", "latency_p50_ms", "ms", "", None),
            (f"latency publish → commit p99, {offered}", "latency_p99_ms", "ms", "", None),
        ):  # fmt: skip
            ratio = agent[key] / baseline[key] if baseline[key] else None
            rows.append(
                {"figure": figure, "agent": round(agent[key], 2),
                 "baseline": round(baseline[key], 2), "unit": unit,
                 "ratio": None if ratio is None else round(ratio, 3), "goal": goal,
                 "met": is_met}
            )  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
