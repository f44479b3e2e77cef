"""`edge-agent export --format pact-v3|pact-v2|gxd` on a real SQLite store, run as an engineer
runs it (a subprocess); every footprint it writes is validated against the unmodified PACT
OpenAPI files and the GxD schema."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config import AgentConfig
from edge_agent.domain import ns_from_iso
from edge_agent.footprint import lot_footprint_id
from edge_agent.store import OutboxRecord, open_store
from tests.unit.footprint_support import (
    SITE,
    STEPS_SCHEMA_URL,
    T0,
    assert_valid_footprint,
    extension,
    lot_record,
    order_record,
    worked_example,
)

REPO = Path(__file__).resolve().parents[2]

FOOTPRINT_SECTION: dict[str, Any] = {
    "company": {
        "name": "Example Enclosures K.K.",
        "ids": ["urn:pact:company:customcode:buyer-id:4321"],
        "domain": "example-enclosures.co.jp",
    },
    "site": {"subdivision": "JP-27"},
    "products": {
        "ENCL-400x300": {
            "name": "Enclosure 400x300",
            "description": "Sheet-steel enclosure 400 x 300 x 200 mm, powder-coated",
            "cpc": "42999",
            "mass_kg": 6.25,
        },
        "ENCL-500": {
            "name": "Enclosure 500",
            "description": "Sheet-steel enclosure 500 x 400 x 250 mm",
            "cpc": "42999",
            "mass_kg": 9.5,
        },
    },
}


def _records() -> list[tuple[dict[str, Any], str]]:
    """(payload, created) of every record in the store, oldest first."""
    stored: list[tuple[dict[str, Any], str]] = []
    # LOT-0001: the worked example; its first summary was incomplete (one step still open).
    lot1, orders1 = worked_example("LOT-0001")
    early = lot_record(orders1[:4], lot_id="LOT-0001", revision=1, open_steps=1)
    stored += [(order, "2026-01-31T01:30:00Z") for order in orders1[:4]]
    stored.append((early, "2026-01-31T01:31:00Z"))
    stored.append((orders1[4], "2026-01-31T02:59:00Z"))
    lot1["revision"] = 2
    stored.append((lot1, "2026-01-31T03:00:00Z"))
    # LOT-0002: 10 pieces, 1.2 kg, the next day.
    orders2 = [order_record("laser-cutter", 1.2, lot_id="LOT-0002", start=T0 + timedelta(days=1))]
    stored += [(orders2[0], "2026-02-01T00:00:00Z")]
    stored.append(
        (lot_record(orders2, lot_id="LOT-0002", quantity_good=10), "2026-02-01T00:01:00Z")
    )
    # Two lots of another product that cannot be footprints.
    orders3 = [order_record("press-brake", 0.5, lot_id="LOT-0003", quantity_good=0, step=8)]
    lot3 = lot_record(orders3, lot_id="LOT-0003", quantity_good=0, product_id="ENCL-500")
    orders4 = [order_record("press-brake", 0.5, lot_id="LOT-0004", step=9)]
    lot4 = lot_record(orders4, lot_id="LOT-0004", product_id="ENCL-500", open_steps=2)
    stored += [(orders3[0], "2026-01-31T06:00:00Z"), (lot3, "2026-01-31T06:01:00Z")]
    stored += [(orders4[0], "2026-01-31T07:00:00Z"), (lot4, "2026-01-31T07:01:00Z")]
    # LOT-0005, in March; and an energy-balance record, which footprints ignore.
    orders5 = [order_record("assembly", 0.3, lot_id="LOT-0005", start=T0 + timedelta(days=32))]
    stored += [(orders5[0], "2026-03-03T00:00:00Z")]
    stored.append((lot_record(orders5, lot_id="LOT-0005"), "2026-03-03T00:01:00Z"))
    balance = {"record_id": "b-1", "revision": 1, "kind": "balance", "start": "x", "end": "y"}
    stored.append((balance, "2026-02-01T01:00:30Z"))
    return stored


@pytest.fixture
def plant(tmp_path: Path) -> Path:
    """A configuration (without a footprint section), a footprint file beside it and a store
    holding the records."""
    config = {
        "site": {"id": SITE, "name": "Osaka enclosure plant", "country": "JP"},
        "meters": [
            {
                "id": "m-laser",
                "protocol": "modbus_tcp",
                "host": "192.0.2.10",
                "points": {
                    "energy": {"address": 0, "type": "uint32", "unit": "kWh", "role": "energy"}
                },
            }
        ],
        "store": {"path": str(tmp_path / "agent.db")},
    }
    (tmp_path / "plant.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "footprint.yaml").write_text(yaml.safe_dump(FOOTPRINT_SECTION))

    async def fill() -> None:
        async with await open_store(tmp_path / "agent.db") as store:
            for payload, created in _records():
                await store.enqueue_record(
                    OutboxRecord(
                        payload["record_id"],
                        payload["revision"],
                        payload["kind"],
                        payload.get("lot_id", ""),
                        payload.get("order_id"),
                        "t",
                        json.dumps(payload),
                        ns_from_iso(created),
                    )
                )

    asyncio.run(fill())
    return tmp_path


def export(
    plant: Path, *args: str, footprint_file: bool = True
) -> subprocess.CompletedProcess[str]:
    extra = ["--footprint-config", str(plant / "footprint.yaml")] if footprint_file else []
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "export", "-c", str(plant / "plant.yaml"),
         *extra, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )  # fmt: skip


def footprints(result: subprocess.CompletedProcess[str], fmt: str) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = json.loads(result.stdout)
    assert isinstance(documents, list)
    for footprint in documents:
        assert_valid_footprint(footprint, fmt)
    return documents


def lot_ids(documents: list[dict[str, Any]]) -> list[str]:
    return [
        lot["lot_id"]
        for footprint in documents
        for lot in extension(footprint, STEPS_SCHEMA_URL)["data"]["lots"]
    ]


@pytest.mark.parametrize("fmt", ["pact-v3", "pact-v2", "gxd"])
def test_lots_of_a_period_skipping_those_that_cannot_be_footprints(plant: Path, fmt: str) -> None:
    result = export(plant, "--format", fmt, "--from", "2026-01-01", "--to", "2026-02-01")
    assert result.returncode == 1, result.stderr  # something was skipped
    documents = footprints(result, fmt)
    assert lot_ids(documents) == ["LOT-0001", "LOT-0002"]  # by end; LOT-0005 is in March
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 2, result.stderr
    assert skipped[0].startswith("edge-agent export: skipped lot LOT-0003: no good quantity")
    assert skipped[1].startswith("edge-agent export: skipped lot LOT-0004: incomplete, 2 step(s)")
    assert "Traceback" not in result.stderr


def test_pact_v3_of_one_lot_from_its_latest_revision(plant: Path) -> None:
    result = export(plant, "--format", "pact-v3", "--lot", "LOT-0001")
    assert result.returncode == 0, result.stderr
    [footprint] = footprints(result, "pact-v3")
    assert footprint["pcf"]["pcfExcludingBiogenicUptake"] == "0.084"  # 1.68 kg / 20 pieces
    assert footprint["id"] == lot_footprint_id("pact-v3", SITE, "LOT-0001", 2)
    assert footprint["precedingPfIds"] == [lot_footprint_id("pact-v3", SITE, "LOT-0001", 1)]
    assert footprint["created"] == "2026-01-31T03:00:00Z"  # when revision 2 was made
    [lot] = extension(footprint, STEPS_SCHEMA_URL)["data"]["lots"]
    assert lot["revision"] == 2
    assert [step["record_available"] for step in lot["steps"]] == [True] * 5


@pytest.mark.parametrize("fmt", ["pact-v2", "gxd"])
def test_pact_v2_of_one_lot_counts_versions(plant: Path, fmt: str) -> None:
    result = export(plant, "--format", fmt, "--lot", "LOT-0001")
    assert result.returncode == 0, result.stderr
    [footprint] = footprints(result, fmt)
    assert footprint["version"] == 2
    assert footprint["created"] == "2026-01-31T01:31:00Z"  # the first revision
    assert footprint["updated"] == "2026-01-31T03:00:00Z"
    assert footprint["pcf"]["pCfExcludingBiogenic"] == "0.01344"  # per kg of 6.25 kg pieces


def test_product_over_a_period(plant: Path) -> None:
    args = ["--format", "pact-v3", "--product", "ENCL-400x300"]
    result = export(plant, *args, "--from", "2026-01-01", "--to", "2026-02-01")
    assert result.returncode == 0, result.stderr
    [footprint] = footprints(result, "pact-v3")
    assert footprint["pcf"]["pcfExcludingBiogenicUptake"] == "0.096"  # 2.88 kg / 30 pieces
    assert footprint["pcf"]["referencePeriodStart"] == "2026-01-01T00:00:00Z"
    assert lot_ids([footprint]) == ["LOT-0001", "LOT-0002"]
    assert footprint["created"] == "2026-02-01T00:01:00Z"  # the newest record it uses


def test_a_product_whose_lots_are_all_skipped_gives_nothing(plant: Path) -> None:
    args = ["--format", "pact-v3", "--product", "ENCL-500"]
    args += ["--from", "2026-01-01", "--to", "2026-02-01"]
    result = export(plant, *args)
    assert result.returncode == 1
    assert json.loads(result.stdout) == []
    assert "skipped lot LOT-0003" in result.stderr
    assert "skipped lot LOT-0004" in result.stderr


def test_reexport_is_byte_identical_and_output_file(plant: Path) -> None:
    first = export(plant, "--format", "pact-v3", "--from", "2026-01-01", "--to", "2026-02-01")
    again = export(plant, "--format", "pact-v3", "--from", "2026-01-01", "--to", "2026-02-01")
    assert first.stdout == again.stdout
    target = plant / "footprints.json"
    written = export(plant, "--format", "pact-v3", "--lot", "LOT-0002", "--output", str(target))
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    assert "1 footprint(s) written to" in written.stderr
    footprints(subprocess.CompletedProcess([], 0, target.read_text(), ""), "pact-v3")


def test_an_unknown_lot_says_so(plant: Path) -> None:
    result = export(plant, "--format", "pact-v3", "--lot", "LOT-9")
    assert result.returncode == 1
    assert json.loads(result.stdout) == []
    assert "no lot LOT-9" in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "pact-v3", "--lot", "L", "--from", "2026-01-01"], ["argument --lot"]),
        (["--format", "pact-v3", "--product", "P", "--from", "2026-01-01"], ["argument --product"]),
        (["--format", "pact-v3", "--kind", "lot"], ["argument --kind"]),
        (["--format", "gxd", "--all-revisions"], ["argument --all-revisions"]),
        (["--format", "csv", "--lot", "LOT-0001"], ["argument --lot", "only for footprints"]),
        (["--format", "pact-v3", "--lot", "A", "--product", "B"], ["not allowed with"]),
        (["--format", "pact-v4"], ["argument --format", "'pact-v4'"]),
        (
            ["--format", "pact-v3", "--from", "2026-02-01", "--to", "2026-01-01"],
            ["argument --from", "is not before --to"],
        ),
    ],
)
def test_bad_arguments_exit_2(plant: Path, args: list[str], words: list[str]) -> None:
    result = export(plant, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_footprint_configuration_exits_2_with_key_paths(plant: Path) -> None:
    result = export(plant, "--format", "pact-v3", footprint_file=False)
    assert result.returncode == 2
    assert "footprint.company.name: required" in result.stderr
    assert "footprint.company.ids: required" in result.stderr
    (plant / "footprint.yaml").write_text("company: {name: X, ids: [not-a-urn]}\n")
    result = export(plant, "--format", "pact-v3")
    assert result.returncode == 2
    assert "footprint.company.ids[0]: 'not-a-urn' is not a URN" in result.stderr


@pytest.mark.skipif(
    "footprint" not in AgentConfig.model_fields,
    reason="AgentConfig has no footprint section yet (see edge_agent/config/footprint.py)",
)
def test_the_configurations_footprint_section(plant: Path) -> None:
    config = yaml.safe_load((plant / "plant.yaml").read_text())
    config["footprint"] = FOOTPRINT_SECTION
    (plant / "plant.yaml").write_text(yaml.safe_dump(config))
    from_section = export(plant, "--format", "pact-v3", "--lot", "LOT-0001", footprint_file=False)
    assert from_section.returncode == 0, from_section.stderr
    from_file = export(plant, "--format", "pact-v3", "--lot", "LOT-0001")
    assert from_section.stdout == from_file.stdout
