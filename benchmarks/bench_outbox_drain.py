"""Outbox drain rate: the agent's OutboxPublisher against a bare paho-mqtt QoS 1 publisher, in
the same run, to the same local Mosquitto.

Agent: the real ``OutboxPublisher`` drains a real SQLite outbox of ~2 kB order records, each
marked sent only on its PUBACK; the run ends when the last record is marked sent.
Baseline: a bare paho-mqtt client (MQTT 5, QoS 1, no properties) publishes the same payloads
with the same in-flight bound (a semaphore released on each PUBACK) until every one is
acknowledged. Both include connecting. Runs alternate agent/baseline (the order flips every
round) and repeat, since the machine is shared; figures are medians over the rounds.

    python benchmarks/bench_outbox_drain.py                        # 10,000 records, 3 rounds
    python benchmarks/bench_outbox_drain.py --inflight 20 --rounds 5 --json drain.json
    python benchmarks/bench_outbox_drain.py --quick                # smoke run, < 20 s
    py-spy record -f raw -r 200 -t -o drain.txt -- \
        python benchmarks/bench_outbox_drain.py --profile-agent --inflight 20 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.config import AgentConfig, parse_config
from edge_agent.publish.drainer import OutboxPublisher
from edge_agent.store import OutboxRecord, OutboxRow, Store, open_store
from edge_agent.store.sqlite import OutboxMessage
from simulators.broker import LocalMosquitto

TOPIC = "bench/records"
LATENCY_TOPIC = "bench/latency"
GOAL_RATIO = 0.8  # at max in-flight 20 (issue 12)


def order_payload(index: int) -> str:
    """An order record of about 2 kB, shaped like the agent's (schema_version, kind, ...)."""
    intervals = [
        {"from": f"2026-12-01T08:{m:02d}:00Z", "to": f"2026-12-01T08:{m + 1:02d}:00Z",
         "kwh": round(0.0123 * (m + 1), 6), "quality": "good", "method": "counter"}
        for m in range(14)
    ]  # fmt: skip
    return json.dumps(
        {
            "schema_version": "1.1",
            "kind": "order",
            "record_id": f"order-{index:08d}-r1",
            "revision": 1,
            "order_id": f"o{index}",
            "lot_id": "LOT-1",
            "equipment_id": "press-1",
            "start": "2026-12-01T08:00:00Z",
            "end": "2026-12-01T08:14:00Z",
            "kwh": 1.2345,
            "co2e_kg": 0.4567,
            "intervals": intervals,
        }
    )


class CountingOutbox:
    """The store as the publisher sees it; notes when the last record is marked sent."""

    def __init__(self, store: Store, records: int) -> None:
        self._store = store
        self._records = records
        self._marked = 0
        self.done = asyncio.Event()
        self.done_at = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def mark_sent_many(self, seqs: Sequence[int], sent_ns: int) -> None:
        await self._store.mark_sent_many(seqs, sent_ns)
        self._marked += len(seqs)
        if self._marked >= self._records and not self.done.is_set():
            self.done_at = time.perf_counter()
            self.done.set()

    async def unsent_messages(self, limit: int, after_seq: int = 0) -> list[OutboxMessage]:
        return await self._store.unsent_messages(limit, after_seq)

    async def published_since(
        self, since_ns: int | None, from_seq: int | None, after_seq: int, limit: int
    ) -> list[OutboxRow]:
        return await self._store.published_since(since_ns, from_seq, after_seq, limit)


def agent_config(broker: LocalMosquitto, folder: Path, inflight: int, run: int) -> AgentConfig:
    return parse_config(
        {
            "site": {"id": "bench"},
            "meters": [{"id": "m", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "sdm630"}],
            "mqtt": {"host": broker.host, "port": broker.port, "max_inflight": inflight,
                     "client_id": f"bench-agent-{inflight}-{run}"},
        },
        folder,
    )  # fmt: skip


async def fill_outbox(path: Path, payloads: list[str]) -> None:
    async with await open_store(path) as store:
        for index, payload in enumerate(payloads):
            await store.enqueue_record(
                OutboxRecord(f"r{index}", 1, "order", "LOT-1", f"o{index}", TOPIC, payload, 0)
            )


async def agent_run(
    broker: LocalMosquitto, folder: Path, template: Path, records: int, inflight: int, run: int
) -> dict[str, float]:
    db = folder / f"agent-{run}.db"
    shutil.copyfile(template, db)
    config = agent_config(broker, folder, inflight, run)
    async with await open_store(db) as store:
        outbox = CountingOutbox(store, records)
        publisher = OutboxPublisher(config, outbox)
        cpu0, began = time.process_time(), time.perf_counter()
        await publisher.start()
        await asyncio.wait_for(outbox.done.wait(), timeout=300)
        elapsed, cpu = outbox.done_at - began, time.process_time() - cpu0
        await publisher.stop()
        left = (await store.outbox_stats()).unsent_count
    db.unlink()
    if left:
        raise RuntimeError(f"agent run ended with {left} records unsent")
    return {"rate": records / elapsed, "cpu_us": cpu / records * 1e6, "seconds": elapsed}


def baseline_run(
    broker: LocalMosquitto, payloads: list[bytes], inflight: int, run: int
) -> dict[str, float]:
    """A bare paho QoS 1 publisher: at most ``inflight`` unacknowledged, counts PUBACKs."""
    window = threading.Semaphore(inflight)
    acked = 0
    done = threading.Event()
    connected = threading.Event()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1
        window.release()
        if acked == len(payloads):
            done.set()

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-bare-{inflight}-{run}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(max(inflight, 20))
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set()
    cpu0, began = time.process_time(), time.perf_counter()
    client.connect(broker.host, broker.port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("baseline client did not connect")
    for payload in payloads:
        window.acquire()
        client.publish(TOPIC, payload, qos=1)
    if not done.wait(300):
        raise RuntimeError(f"baseline: only {acked} of {len(payloads)} acknowledged")
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu0
    client.disconnect()
    client.loop_stop()
    return {
        "rate": len(payloads) / elapsed,
        "cpu_us": cpu / len(payloads) * 1e6,
        "seconds": elapsed,
    }


class Arrivals:
    """A subscriber that notes when each message reaches it (the broker delivered it)."""

    def __init__(self, broker: LocalMosquitto) -> None:
        self._lock = threading.Lock()
        self._arrived: dict[str, float] = {}
        self._new = threading.Condition(self._lock)
        subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="bench-arrivals",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = lambda c, *_: c.subscribe(f"{LATENCY_TOPIC}/#", qos=0)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("latency subscriber did not subscribe")

    def _on_message(self, _: Any, __: Any, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        with self._new:
            self._arrived[message.topic] = now
            self._new.notify_all()

    def wait(self, topic: str, timeout_s: float = 10.0) -> float:
        with self._new:
            if not self._new.wait_for(lambda: topic in self._arrived, timeout_s):
                raise RuntimeError(f"{topic} did not arrive")
            return self._arrived[topic]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def agent_wake_latencies(
    broker: LocalMosquitto, arrivals: Arrivals, folder: Path, count: int, round_: int
) -> dict[str, list[float]]:
    """An idle publisher: a record is enqueued, notify() called (what the engine does), and
    the time until the record reaches a subscriber through the broker is noted."""
    config = agent_config(broker, folder, 20, 10_000 + round_)
    db = folder / f"wake-{round_}.db"
    notified: list[float] = []
    enqueued: list[float] = []
    async with await open_store(db) as store:
        publisher = OutboxPublisher(config, store)
        await publisher.start()
        await publisher.link.connected.wait()
        await asyncio.sleep(0.3)  # connected, status published, drain idle
        for index in range(count):
            topic = f"{LATENCY_TOPIC}/agent-{round_}-{index}"
            began = time.perf_counter()
            await store.enqueue_record(
                OutboxRecord(f"w{index}", 1, "order", "LOT-1", f"w{index}", topic,
                             order_payload(index), time.time_ns())
            )  # fmt: skip
            notify_at = time.perf_counter()
            publisher.notify()
            arrived = await asyncio.to_thread(arrivals.wait, topic)
            notified.append((arrived - notify_at) * 1e3)
            enqueued.append((arrived - began) * 1e3)
            await asyncio.sleep(0.02)  # idle again (PUBACK marked) before the next record
        await publisher.stop()
    db.unlink()
    return {"notify_to_broker_ms": notified, "enqueue_to_broker_ms": enqueued}


def baseline_wake_latencies(
    broker: LocalMosquitto, arrivals: Arrivals, count: int, round_: int
) -> dict[str, list[float]]:
    """A bare paho client (connected, idle) publishes one message: time to the subscriber."""
    connected = threading.Event()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-bare-wake-{round_}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_connect = lambda *_: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("baseline client did not connect")
    latencies: list[float] = []
    for index in range(count):
        topic = f"{LATENCY_TOPIC}/bare-{round_}-{index}"
        began = time.perf_counter()
        client.publish(topic, order_payload(index).encode(), qos=1)
        latencies.append((arrivals.wait(topic) - began) * 1e3)
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()
    return {"publish_to_broker_ms": latencies}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure_wake(count: int, rounds: int) -> dict[str, Any]:
    agent: list[float] = []
    agent_enqueue: list[float] = []
    bare: list[float] = []
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as name:
        arrivals = Arrivals(broker)
        try:
            for round_ in range(rounds):
                runs = await agent_wake_latencies(broker, arrivals, Path(name), count, round_)
                agent += runs["notify_to_broker_ms"]
                agent_enqueue += runs["enqueue_to_broker_ms"]
                bare += (
                    await asyncio.to_thread(
                        baseline_wake_latencies, broker, arrivals, count, round_
                    )
                )["publish_to_broker_ms"]
        finally:
            arrivals.close()
    figures: dict[str, Any] = {
        "agent_notify_to_broker_ms": {
            "p50": _percentile(agent, 0.5), "p99": _percentile(agent, 0.99), "max": max(agent)
        },
        "agent_enqueue_to_broker_ms": {
            "p50": _percentile(agent_enqueue, 0.5), "p99": _percentile(agent_enqueue, 0.99),
            "max": max(agent_enqueue),
        },
        "bare_publish_to_broker_ms": {
            "p50": _percentile(bare, 0.5), "p99": _percentile(bare, 0.99), "max": max(bare)
        },
        "samples": len(agent),
    }  # fmt: skip
    a, b = figures["agent_notify_to_broker_ms"], figures["bare_publish_to_broker_ms"]
    e = figures["agent_enqueue_to_broker_ms"]
    print(
        f"idle drainer woken by notify(): record at the broker p50 {a['p50']:.2f} ms, "
        f"p99 {a['p99']:.2f} ms (from the start of the durable enqueue: p50 {e['p50']:.2f}, "
        f"p99 {e['p99']:.2f}); bare paho publish p50 {b['p50']:.2f} ms, p99 {b['p99']:.2f} ms "
        f"({len(agent)} records each)",
        flush=True,
    )
    return figures


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _paired_ratio(agent: list[dict[str, float]], bare: list[dict[str, float]], key: str) -> float:
    """Median of agent / baseline over the rounds, each agent run against the baseline run
    next to it in time (the shared machine's load moves both alike)."""
    return statistics.median(a[key] / b[key] for a, b in zip(agent, bare, strict=True))


async def profile_agent(records: int, inflights: list[int], rounds: int) -> None:
    payloads = [order_payload(i) for i in range(records)]
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        template = folder / "template.db"
        await fill_outbox(template, payloads)
        for inflight in inflights:
            for run in range(rounds):
                figures = await agent_run(broker, folder, template, records, inflight, run)
                print(
                    f"max_inflight {inflight:4d}: agent {figures['rate']:8.0f} records/s, "
                    f"CPU {figures['cpu_us']:.0f} µs per record",
                    flush=True,
                )


async def measure(records: int, inflights: list[int], rounds: int) -> dict[str, Any]:
    payload_text = [order_payload(i) for i in range(records)]
    payload_bytes = [p.encode() for p in payload_text]
    results: dict[str, Any] = {}
    with LocalMosquitto() as broker, tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        template = folder / "template.db"
        await fill_outbox(template, payload_text)
        run = 0
        for inflight in inflights:
            agent: list[dict[str, float]] = []
            bare: list[dict[str, float]] = []
            for round_ in range(rounds):
                order = ("agent", "bare") if round_ % 2 == 0 else ("bare", "agent")
                for who in order:
                    run += 1
                    if who == "agent":
                        agent.append(
                            await agent_run(broker, folder, template, records, inflight, run)
                        )
                    else:
                        bare.append(
                            await asyncio.to_thread(
                                baseline_run, broker, payload_bytes, inflight, run
                            )
                        )
            results[str(inflight)] = {"agent": agent, "baseline": bare}
            a, b = _median(agent, "rate"), _median(bare, "rate")
            print(
                f"max_inflight {inflight:4d}: agent {a:8.0f} records/s, bare paho {b:8.0f} msgs/s, "
                f"ratio {_paired_ratio(agent, bare, 'rate'):.2f} (per round: "
                + ", ".join(
                    f"{x['rate'] / y['rate']:.2f}" for x, y in zip(agent, bare, strict=True)
                )
                + f"); CPU per record: agent {_median(agent, 'cpu_us'):.0f} µs, "
                f"bare {_median(bare, 'cpu_us'):.0f} µs",
                flush=True,
            )
    return results


def report(
    results: dict[str, Any],
    wake: dict[str, Any],
    records: int,
    rounds: int,
    command: str,
    payload_size: int,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for inflight, runs in results.items():
        agent, bare = runs["agent"], runs["baseline"]
        ratio = _paired_ratio(agent, bare, "rate")
        goal = f"≥ {GOAL_RATIO}" if inflight == "20" else None
        rows.append(
            {
                "figure": f"outbox drain, QoS 1, ~2 kB records, max in-flight {inflight} "
                "(ratio: median of the paired rounds)",
                "agent": round(_median(agent, "rate"), 1),
                "baseline": round(_median(bare, "rate"), 1),
                "unit": "records/s",
                "ratio": round(ratio, 3),
                "goal": goal,
                "met": (ratio >= GOAL_RATIO) if goal else None,
            }
        )
        rows.append(
            {
                "figure": f"CPU per record (all threads), max in-flight {inflight}",
                "agent": round(_median(agent, "cpu_us"), 1),
                "baseline": round(_median(bare, "cpu_us"), 1),
                "unit": "µs CPU/record",
                "ratio": round(_paired_ratio(agent, bare, "cpu_us"), 3),
                "goal": None,
                "met": None,
            }
        )
    agent_wake, bare_wake = wake["agent_notify_to_broker_ms"], wake["bare_publish_to_broker_ms"]
    for q, goal in (("p50", "≤ 2 ms"), ("p99", None)):
        rows.append(
            {
                "figure": f"idle drainer: notify() → record at the broker, {q} "
                "(baseline: a bare paho publish)",
                "agent": round(agent_wake[q], 3),
                "baseline": round(bare_wake[q], 3),
                "unit": "ms",
                "ratio": round(agent_wake[q] / bare_wake[q], 3),
                "goal": goal,
                "met": agent_wake[q] <= 2.0 if goal else None,
            }
        )
    return {
        "benchmark": "outbox_drain",
        "title": "Outbox drain to a local Mosquitto vs a bare paho QoS 1 publisher",
        "command": command,
        "rows": rows,
        "details": {
            "records_per_run": records,
            "rounds": rounds,
            "payload_bytes": payload_size,
            "baseline": "paho-mqtt, MQTT 5, QoS 1, no properties, semaphore-bounded in flight",
            "agent": "OutboxPublisher + SQLite outbox (marked sent on PUBACK), MQTT 5 properties",
            "figures": "agent, baseline: medians over the rounds; ratio: median of the "
            "per-round ratios (agent run / the baseline run next to it)",
            "runs": results,
            "wake_latency": wake,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wake-samples", type=int, default=100, help="per round")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 records, 1 round")
    parser.add_argument("--json", help="write the results here (benchmark JSON contract)")
    parser.add_argument(
        "--profile-agent",
        action="store_true",
        help="agent drains only, nothing else in the process (to run under py-spy)",
    )
    args = parser.parse_args()
    records, rounds = (1_000, 1) if args.quick else (args.records, args.rounds)
    if args.profile_agent:
        asyncio.run(profile_agent(records, args.inflight, rounds))
        return 0
    results = asyncio.run(measure(records, args.inflight, rounds))
    wake = asyncio.run(measure_wake(20 if args.quick else args.wake_samples, rounds))
    if args.json:
        command = shlex.join(["python", "benchmarks/bench_outbox_drain.py", *sys.argv[1:]])
        result = report(results, wake, records, rounds, command, len(order_payload(0)))
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
