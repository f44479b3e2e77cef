"""The agent process as a service manager sees it (issue 9), as a subprocess against a real
Mosquitto whose retained status messages show what is live:

- SIGHUP reloads the configuration: a bad new file is rejected with its problems and the running
  configuration stays; a good one replaces it.
- A background task that dies takes the process down with a non-zero status after `offline` is
  published, so the service manager restarts it (never a process that looks alive and does
  nothing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import LocalMosquitto

REPO = Path(__file__).resolve().parents[2]


def agent_config(broker: LocalMosquitto, store: Path, status_topic: str) -> dict[str, Any]:
    return {
        "site": {"id": "s1"},
        "meters": [
            {
                "id": "m1",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": 1,  # nothing listens: the meter is reported unavailable, the agent runs
                "interval_s": 1,
                "timeout_s": 0.5,
                "points": {"energy": {"address": 0, "type": "float32", "unit": "kWh", "role": "energy"}},
            }
        ],
        "equipment": [{"id": "press", "meters": ["m1"], "max_power_kw": 50}],
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": "t", "status_topic": status_topic},
        "emission_factors": {
            "electricity": {"value": 0.4, "unit": "kgCO2e/kWh", "source": "s", "version": "1"}
        },
        "store": {"path": str(store)},
    }  # fmt: skip


class Statuses:
    """Every retained status message, as (topic, state)."""

    def __init__(self, broker: LocalMosquitto) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe("t/s1/#", qos=1)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.seen.append((message.topic, json.loads(message.payload)["state"]))

    def wait_for(
        self, topic: str, state: str, process: subprocess.Popen[bytes] | None, log: Path
    ) -> None:
        wait_until(lambda: (topic, state) in self.seen, process, log, f"{state} on {topic}")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def spawn_agent(
    config: Path, log: Path, *options: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``edge-agent [options] run -c config`` as a child process, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", *options, "run", "-c", str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )  # fmt: skip


def reap(process: subprocess.Popen[bytes]) -> None:
    """Kill a child a failed test left running."""
    if process.poll() is None:
        process.kill()
        process.wait(10)


def wait_until(
    done: Callable[[], bool], process: subprocess.Popen[bytes] | None, log: Path, what: str
) -> None:
    """Until ``done``; fails at once if ``process`` (one that should be running) exits."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if done():
            return
        assert process is None or process.poll() is None, (
            f"the agent exited ({process.returncode}):\n{log.read_text()}"
        )
        time.sleep(0.05)
    raise AssertionError(f"no {what} within 30 s:\n{log.read_text()}")


def test_sighup_rejects_a_bad_configuration_and_applies_a_good_one(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    path, log = tmp_path / "agent.yaml", tmp_path / "agent.log"
    good = agent_config(mosquitto, tmp_path / "agent.db", "t/s1/status-a")
    path.write_text(yaml.safe_dump(good))
    statuses = Statuses(mosquitto)
    process = spawn_agent(path, log)
    try:
        statuses.wait_for("t/s1/status-a", "online", process, log)

        bad = json.loads(json.dumps(good))
        bad["meters"][0]["port"] = 70000
        bad["mqtt"]["status_topic"] = "t/s1/status-bad"
        path.write_text(yaml.safe_dump(bad))
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload rejected" in log.read_text(), process, log, "rejection")
        text = log.read_text()
        assert "meters[0].port: 70000 is not valid" in text
        assert "Traceback" not in text
        time.sleep(1.0)
        assert process.poll() is None
        assert not any(topic == "t/s1/status-bad" for topic, _ in statuses.seen)

        changed = json.loads(json.dumps(good))
        changed["mqtt"]["status_topic"] = "t/s1/status-b"
        path.write_text(yaml.safe_dump(changed))
        process.send_signal(signal.SIGHUP)
        statuses.wait_for("t/s1/status-b", "online", process, log)
        assert "configuration reloaded" in log.read_text()

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        statuses.wait_for("t/s1/status-b", "offline", None, log)
    finally:
        reap(process)
        statuses.close()


def test_a_task_that_dies_stops_the_process_with_status_1_after_offline(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    """The database is destroyed under the running agent (its first pages overwritten): the
    housekeeping task's next query fails and the task dies."""
    path, log, store = tmp_path / "agent.yaml", tmp_path / "agent.log", tmp_path / "agent.db"
    path.write_text(yaml.safe_dump(agent_config(mosquitto, store, "t/s1/status")))
    statuses = Statuses(mosquitto)
    process = spawn_agent(path, log)
    try:
        statuses.wait_for("t/s1/status", "online", process, log)
        for name in (store.name, f"{store.name}-wal", f"{store.name}-shm"):
            if (tmp_path / name).exists():
                with (tmp_path / name).open("r+b") as db:
                    db.write(b"\xff" * 4096)
        assert process.wait(30) == 1, log.read_text()
        statuses.wait_for("t/s1/status", "offline", None, log)  # published before the exit
        text = log.read_text()
        assert "task housekeeping failed" in text or "failed: StoreError" in text
        assert "exiting with status 1" in text
    finally:
        reap(process)
        statuses.close()


def test_json_logs_are_one_object_a_line(mosquitto: LocalMosquitto, tmp_path: Path) -> None:
    path, log = tmp_path / "agent.yaml", tmp_path / "agent.log"
    path.write_text(yaml.safe_dump(agent_config(mosquitto, tmp_path / "agent.db", "t/s1/status")))
    statuses = Statuses(mosquitto)
    process = spawn_agent(path, log, "--log-format", "json")
    try:
        statuses.wait_for("t/s1/status", "online", process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        reap(process)
        statuses.close()
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert entries
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(e["message"].startswith("edge-agent running: site s1") for e in entries)
    assert any(e["level"] == "WARNING" and e["logger"].startswith("edge_agent") for e in entries)
