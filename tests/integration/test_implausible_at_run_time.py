"""At run time, a meter whose values are implausible (power above its equipment's
max_power_kw, a negative or absurd counter) is logged at WARNING once, not every poll, and at
INFO once when it recovers; real Modbus TCP and real OPC UA against the simulators on loopback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.clock import SystemClock
from edge_agent.config import parse_config
from edge_agent.config.models import OpcUaMeter
from edge_agent.plausibility import PowerLimit
from edge_agent.sources.modbus.adapter import ModbusConnection, build_modbus_sources
from edge_agent.sources.opcua.adapter import OpcUaEndpointSource
from simulators.modbus_meters import SimulatedPlant
from simulators.opcua_machines import OpcUaMachineServer, machines_for
from tests.integration.test_modbus_polling import meter_config
from tests.integration.test_opcua import MACHINE, opcua_config

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


async def test_an_implausible_opc_ua_meter_is_logged_once_and_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = "edge_agent.sources.opcua.adapter"
    caplog.set_level(logging.INFO, logger=logger)
    async with OpcUaMachineServer(machines_for([MACHINE]), tick_s=0.05) as server:
        config = opcua_config(server.url, tmp_path, ns=2)
        (meter,) = config.meters
        assert isinstance(meter, OpcUaMeter)
        # The robot draws 12 kW running; its equipment is said never to draw more than 5.
        limits = {"m-weld": PowerLimit(5.0, ("welding-cell",))}
        source = OpcUaEndpointSource(config.opcua_endpoints[0], [meter], SystemClock(), limits)
        try:
            await source.read_now(["m-weld"])  # idle: plausible
            await server.set_state(MACHINE, "running")
            for _ in range(3):
                await source.read_now(["m-weld"])
            await server.set_state(MACHINE, "idle")
            for _ in range(2):
                await source.read_now(["m-weld"])
        finally:
            await source.close()
    records = [r for r in caplog.records if r.name == logger]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(warnings) == 1, warnings
    assert "meter m-weld point power: power" in warnings[0]
    assert "above max_power_kw 5 of equipment welding-cell" in warnings[0]
    assert infos == ["meter m-weld values are plausible again"]
