"""`/healthz` and `/metrics` of a running agent (issue 9): a subprocess with a real Modbus
simulator and a real Mosquitto. The endpoint turns 503 with the reason when the broker or the
meter goes away, and 200 again when it is back; `/metrics` is read with the Prometheus client's
own parser."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from simulators.broker import LocalMosquitto, free_port
from simulators.modbus_meters import SimulatedPlant
from simulators.plant import ENCLOSURE_LINE, agent_config, build_plant, write_config
from tests.integration.test_process_lifecycle import spawn_agent

REPO = Path(__file__).resolve().parents[2]
STEPS = ENCLOSURE_LINE[:1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


async def until(check: Callable[[], bool], what: str, log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not seen in {timeout_s} s:\n{log.read_text()[-4000:]}")


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    return status, json.loads(body) if body else {}


def reasons(port: int) -> set[str]:
    return {r["code"] for r in health(port)[1].get("reasons", [])}


async def test_healthz_follows_the_broker_and_the_meter_and_metrics_parse(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "agent.log"
    async with SimulatedPlant() as plant:
        build_plant(plant, STEPS)
        for meter in plant.meters.values():
            await meter.start()
        config = agent_config(
            plant, mqtt_host=mosquitto.host, mqtt_port=mosquitto.port,
            store_path=tmp_path / "agent.db", steps=STEPS,
        )  # fmt: skip
        config["health"] = {
            "enabled": True, "port": port, "stale_meter_s": 3, "broker_unreachable_s": 2,
        }  # fmt: skip
        path = write_config(config, tmp_path / "plant.yaml")
        process = spawn_agent(path, log)
        try:
            await until(lambda: health(port)[0] == 200, "healthy", log)
            assert health(port)[1] == {"status": "ok", "reasons": []}

            mosquitto.stop()
            await until(lambda: "broker_unreachable" in reasons(port), "broker 503", log)
            assert health(port)[0] == 503
            mosquitto.start()
            await until(lambda: health(port)[0] == 200, "healthy after the broker", log)

            meter = next(iter(plant.meters.values()))
            await meter.set_down(True)
            await until(lambda: "stale_meter" in reasons(port), "meter 503", log)
            detail = health(port)[1]["reasons"][0]["detail"]
            assert detail.startswith(f"meter {meter.id}: last good reading")
            await meter.set_down(False)
            await until(lambda: health(port)[0] == 200, "healthy after the meter", log)

            status, text = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(text)}
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 30)
    assert process.returncode == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert text.count("records wait in the outbox") == 1  # logged once when it went away
    assert text.count("reachable again after") == 1  # and once when it came back
    latency = families["edge_agent_poll_latency_seconds"]
    counts = [s for s in latency.samples if s.name.endswith("_count")]
    assert counts
    assert counts[0].value > 3
    errors = {s.labels["meter"]: s.value for s in families["edge_agent_poll_errors"].samples}
    assert errors[meter.id] >= 1
    stored = families["edge_agent_samples_stored"].samples[0].value
    assert stored > 0
    for name in (
        "edge_agent_outbox_depth",
        "edge_agent_outbox_oldest_age_seconds",
        "edge_agent_event_loop_lag_seconds",
        "edge_agent_records_published",
        "edge_agent_mes_events",
        "edge_agent_healthy",
    ):
        assert name in families, sorted(families)
