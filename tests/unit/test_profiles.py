"""Every shipped meter profile validates and says where its register map comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config import parse_config
from edge_agent.config.models import COUNTER_UNITS, POWER_UNITS_TO_KW, ModbusPoint
from edge_agent.domain import PointRole
from edge_agent.sources.modbus.decode import decode_registers
from edge_agent.sources.modbus.plan import plan_reads

PROFILE_DIR = Path(__file__).resolve().parents[2] / "edge_agent" / "profiles"
PROFILES = sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


def profile_points(name: str, tmp_path: Path) -> dict[str, ModbusPoint]:
    data: dict[str, Any] = {
        "site": {"id": "s"},
        "meters": [{"id": "m", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": name}],
    }
    meter = parse_config(data, tmp_path).meter("m")
    return {n: p for n, p in meter.points.items() if isinstance(p, ModbusPoint)}


def test_the_shipped_profiles_are_found() -> None:
    assert {"sdm630", "em24", "pm5xxx"} <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_validates_with_an_energy_counter_and_a_power_point(
    name: str, tmp_path: Path
) -> None:
    points = profile_points(name, tmp_path)
    energy = [p for p in points.values() if p.role is PointRole.ENERGY]
    power = [p for p in points.values() if p.role is PointRole.POWER]
    assert len(energy) == 1
    assert energy[0].unit in COUNTER_UNITS
    assert len(power) == 1
    assert power[0].unit in POWER_UNITS_TO_KW
    # A default meter reads a whole profile in a few requests, none over the Modbus limit.
    blocks = plan_reads(points, max_gap_registers=8, max_registers_per_read=125)
    assert all(block.count <= 125 for block in blocks)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_names_its_source_and_address_convention(name: str) -> None:
    text = (PROFILE_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert data["profile"] == name
    for key in ("maker", "model", "document"):
        assert isinstance(data[key], str)
        assert data[key].strip()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#")).lower()
    assert "source:" in header  # the maker's document, cited
    assert "address" in header  # how the maker's numbers map to 0-based protocol addresses


@pytest.mark.parametrize("name", PROFILES)
def test_profile_points_do_not_overlap(name: str, tmp_path: Path) -> None:
    used: dict[tuple[str, int], str] = {}
    for point_name, point in profile_points(name, tmp_path).items():
        for register in range(point.address, point.address + point.register_count):
            key = (point.register_type, register)
            assert key not in used, f"{point_name} overlaps {used[key]} at {key}"
            used[key] = point_name


def test_sdm630_energy_is_a_big_endian_float_input_register(tmp_path: Path) -> None:
    """Eastron: 30073 "Total import kWh" -> input register 72, IEEE 754 float, high word first."""
    energy = profile_points("sdm630", tmp_path)["energy"]
    assert (energy.register_type, energy.address, energy.type) == ("input", 72, "float32")
    assert decode_registers([0x4370, 0x8000], energy) == 240.5


def test_em24_energy_is_int32_lsw_first_times_ten(tmp_path: Path) -> None:
    """Carlo Gavazzi EM24: kWh (+) TOT at 0x0034, INT32 LSW first, weight kWh x 10."""
    energy = profile_points("em24", tmp_path)["energy"]
    assert (energy.address, energy.type, energy.word_order) == (0x34, "int32", "little")
    # 123456.7 kWh = 1234567 = 0x0012D687: low word 0xD687 comes first.
    assert decode_registers([0xD687, 0x0012], energy) == pytest.approx(123456.7)


def test_pm5xxx_energy_is_int64_wh_at_register_3204(tmp_path: Path) -> None:
    """Schneider PM5100/5300: register 3204 (1-based) "Active Energy Delivered (Into Load)",
    INT64 Wh -> holding address 3203; 3060 "Active Power Total" FLOAT32 kW -> 3059."""
    points = profile_points("pm5xxx", tmp_path)
    energy, power = points["energy"], points["power"]
    assert (energy.register_type, energy.address, energy.type, energy.unit) == (
        "holding",
        3203,
        "int64",
        "Wh",
    )
    assert (power.address, power.type, power.unit) == (3059, "float32", "kW")
    # 98,765,432,101 Wh = 0x00000016_FEE0_E525 (4 words, most significant first).
    assert decode_registers([0x0000, 0x0016, 0xFEE0, 0xE525], energy) == 98_765_432_101.0
