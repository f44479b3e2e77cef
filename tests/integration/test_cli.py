"""The `edge-agent` command as an engineer runs it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import yaml

from edge_agent.config.yaml_loading import load_yaml_text
from simulators.modbus_meters import SimulatedPlant
from simulators.plant import ENCLOSURE_LINE, agent_config, build_plant, write_config

REPO = Path(__file__).resolve().parents[2]


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_check_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    data = load_yaml_text((REPO / "config/example.yaml").read_text())
    data["meters"][0]["port"] = 70000
    data["meters"][2]["points"]["energy"]["adress"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = edge_agent("check", "-c", str(bad))
    assert result.returncode == 2
    assert "2 problem(s)" in result.stderr
    assert "meters[0].port: 70000 is not valid" in result.stderr
    assert "meters[2].points.energy.adress: unknown key" in result.stderr


async def test_probe_reads_every_point_and_names_failures(tmp_path: Path) -> None:
    async with SimulatedPlant() as plant:
        build_plant(plant, ENCLOSURE_LINE[:2])
        for meter in plant.meters.values():
            await meter.start()
        config = agent_config(
            plant, mqtt_host="127.0.0.1", mqtt_port=1883, store_path=tmp_path / "a.db",
            steps=ENCLOSURE_LINE[:2],
        )  # fmt: skip
        config["meters"][1]["unit_id"] = 9  # wrong unit id
        path = write_config(config, tmp_path / "plant.yaml")
        result = await asyncio.to_thread(edge_agent, "check", "-c", str(path), "--probe")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    energy = next(line for line in lines if line.startswith("m-laser") and " energy " in line)
    assert "kWh" in energy
    assert "good" in energy
    assert any(line.startswith("m-laser") and "good (idle)" in line for line in lines)
    assert any(line.startswith("m-press") and "unit 9" in line for line in lines)
    assert "1 meter(s) failed: m-press" in result.stdout


async def test_lots_lists_records_with_publish_state(tmp_path: Path) -> None:
    from edge_agent.store import OutboxRecord, open_store

    config = load_yaml_text((REPO / "config/example.yaml").read_text())
    config["store"]["path"] = str(tmp_path / "agent.db")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    payload = (
        '{"lot_id": "LOT-7", "order_id": "LOT-7-laser", "energy_kwh": 1.25, "co2e_kg": 0.5425}'
    )
    async with await open_store(tmp_path / "agent.db") as store:
        first = await store.enqueue_record(
            OutboxRecord("r1", 1, "order", "LOT-7", "LOT-7-laser", "t", payload, 10**18)
        )
        await store.enqueue_record(
            OutboxRecord("r2", 1, "lot", "LOT-7", None, "t", payload, 10**18)
        )
        await store.mark_sent_many([first], 10**18 + 10**9)
    result = await asyncio.to_thread(edge_agent, "lots", "-c", str(path))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "LOT-7" in line]
    assert len(rows) == 2
    assert "unsent" in rows[0]  # newest first: the lot record
    assert "1.2500" in rows[1]
    assert "sent 2001-09-09T01:46:41.000Z" in rows[1]
    assert "outbox: 1 unsent" in result.stdout
