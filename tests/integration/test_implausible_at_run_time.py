"""At run time, a meter whose values are implausible (power above its equipment's
max_power_kw, a negative or absurd counter) is logged at WARNING once, not every poll, and at
INFO once when it recovers; real Modbus TCP against the simulator on loopback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.clock import SystemClock
from edge_agent.config import parse_config
from edge_agent.sources.modbus.adapter import ModbusConnection, build_modbus_sources
from simulators.modbus_meters import SimulatedPlant
from tests.integration.test_modbus_polling import meter_config

ADAPTER_LOG = "edge_agent.sources.modbus.adapter"


async def test_implausible_power_is_logged_once_and_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ADAPTER_LOG)
    async with SimulatedPlant() as plant:
        meter = plant.add_meter("m-laser", "laser-cutter", state="idle")  # 3 kW idle, 22 running
        await meter.start()
        config = parse_config(
            {
                "site": {"id": "test-site"},
                "meters": [meter_config("m-laser", meter.port)],
                # The equipment says it never draws more than 10 kW.
                "equipment": [{"id": "laser", "meters": ["m-laser"], "max_power_kw": 10}],
                "emission_factors": {
                    "electricity": {
                        "value": 0.45,
                        "unit": "kgCO2e/kWh",
                        "source": "t",
                        "version": "1",
                    }
                },
            },
            tmp_path,
        )
        (source,) = build_modbus_sources(config, SystemClock())
        assert isinstance(source, ModbusConnection)
        try:
            await source.read_now(["m-laser"])  # plausible
            meter.machine.set_state("running")
            for _ in range(3):
                await source.read_now(["m-laser"])
            meter.machine.set_state("idle")
            for _ in range(2):
                await source.read_now(["m-laser"])
        finally:
            await source.close()
    records = [r for r in caplog.records if r.name == ADAPTER_LOG]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(warnings) == 1, warnings
    assert "meter m-laser point power: power" in warnings[0]
    assert "is above max_power_kw 10 of equipment laser (expected at most 10 kW)" in warnings[0]
    assert infos == ["meter m-laser values are plausible again"]
