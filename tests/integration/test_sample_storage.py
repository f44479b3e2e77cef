"""store.other_points with the real agent, a real Modbus meter and a real SQLite file: energy
and power are stored at every poll, the SDM630's five `other` points once per slot and on a
change beyond the deadband."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

from edge_agent.app import Agent
from edge_agent.config import parse_config
from edge_agent.config.models import ModbusPoint
from simulators.broker import free_port as free_broker_port
from tests.integration.modbus_server import MeterServer, free_port

OTHER = ("voltage_l1", "current_l1", "frequency", "export_energy", "total_energy")


def stored(db: Path) -> tuple[Counter[str], list[float], set[int]]:
    """Samples per point, the voltages in time order, the 2 s slots the polls fell in (new
    samples are in the journal until they are merged into the indexed table)."""
    every = "SELECT * FROM samples UNION ALL SELECT * FROM samples_journal"
    with sqlite3.connect(db) as connection:
        counts = Counter(p for (p,) in connection.execute(f"SELECT point FROM ({every})"))
        slots = {
            ts // 2_000_000_000
            for (ts,) in connection.execute(f"SELECT ts_ns FROM ({every}) WHERE point = 'energy'")
        }
        voltages = [
            v
            for (v,) in connection.execute(
                f"SELECT value FROM ({every}) WHERE point = 'voltage_l1' ORDER BY ts_ns"
            )
        ]
    return counts, voltages, slots


async def test_other_points_are_stored_per_slot_and_on_change(tmp_path: Path) -> None:
    port = free_port()
    config = parse_config(
        {
            "site": {"id": "thin"},
            # No broker listens there: sample storage does not depend on it. The test server maps only
            # the points' registers, so the meter reads no gaps (max_gap_registers: 0).
            "mqtt": {"host": "127.0.0.1", "port": free_broker_port()},
            "store": {
                "path": str(tmp_path / "agent.db"),
                "batch_max_delay_s": 0.1,
                "other_points": {"every_s": 2, "on_change": 5},
            },
            "meters": [
                {"id": "m", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": port,
                 "profile": "sdm630", "interval_s": 0.1, "timeout_s": 0.5,
                 "max_gap_registers": 0}
            ],
            "balance": {"enabled": False},
        },
        tmp_path,
    )  # fmt: skip
    points = {n: p for n, p in config.meter("m").points.items() if isinstance(p, ModbusPoint)}
    values = dict.fromkeys(points, 1.0) | {"voltage_l1": 230.0, "energy": 10.0}
    async with MeterServer(points, values, port=port) as server, Agent(config) as agent:
        await asyncio.sleep(2.0)
        server.set_value("voltage_l1", 231.0)  # within the deadband: waits for its slot
        await asyncio.sleep(1.0)
        server.set_value("voltage_l1", 240.0)  # beyond it: stored at once
        await asyncio.sleep(2.5)
    thinned = agent.thinning.thinned
    counts, voltages, slots = stored(tmp_path / "agent.db")
    polls = counts["energy"]
    assert polls >= 30, counts  # 5.5 s at 0.1 s, on a busy machine
    assert counts["power"] == polls
    # One per 2 s slot the polls fell in, plus the change to 240 V for the voltage (a point's
    # block may be read a few ms after the energy's, across a slot's edge: hence ±1).
    assert 3 <= len(slots) <= 6, slots
    for name in OTHER:
        per_slot = counts[name] - (1 if name == "voltage_l1" else 0)
        assert abs(per_slot - len(slots)) <= 1, (name, counts, len(slots))
    assert 240.0 in voltages
    assert voltages.index(240.0) > 0
    assert thinned == 5 * polls - sum(counts[name] for name in OTHER)
