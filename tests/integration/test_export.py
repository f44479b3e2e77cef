"""`edge-agent export` on a real SQLite file, run as an engineer runs it (a subprocess)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config.yaml_loading import load_yaml_text
from edge_agent.domain import ns_from_iso
from edge_agent.export import CSV_COLUMNS
from edge_agent.store import OutboxRecord, open_store

REPO = Path(__file__).resolve().parents[2]


def order_payload(revision: int, energy: float, flags: list[str]) -> dict[str, Any]:
    return {
        "record_id": "r-order", "schema_version": "1.0", "kind": "order", "revision": revision,
        "lot_id": "LOT-7", "order_id": "LOT-7-laser", "equipment_id": "laser-cutter",
        "start": "2026-01-09T23:00:00.000Z", "end": "2026-01-09T23:30:00.000Z",
        "energy_kwh": energy, "uncertainty_kwh": 0.002, "co2e_kg": round(energy * 0.434, 6),
        "measured_share": 1.0, "quantity_good": 20,
        "flags": [{"code": code, "detail": "..."} for code in flags],
    }  # fmt: skip


LOT = {
    "record_id": "r-lot", "schema_version": "1.0", "kind": "lot", "revision": 1,
    "lot_id": "LOT-7", "start": None, "end": None, "energy_kwh": 1.25, "uncertainty_kwh": 0.002,
    "co2e_kg": 0.5425, "measured_share": 1.0, "quantity_good": None, "flags": [],
}  # fmt: skip
BALANCE = {
    "record_id": "r-bal", "schema_version": "1.0", "kind": "balance", "revision": 1,
    "start": "2026-01-31T23:00:00.000Z", "end": "2026-02-01T00:00:00.000Z",
    "metered_kwh": 9.5, "uncertainty_kwh": 0.01, "measured_share": 0.98,
    "flags": [{"code": "meter_gap", "detail": "..."}],
}  # fmt: skip

# (record_id, revision, kind, lot_id, order_id, payload, created)
RECORDS = [
    ("r-order", 1, "order", "LOT-7", "LOT-7-laser", order_payload(1, 1.0, []), "2026-01-10T00:00:00Z"),
    ("r-lot", 1, "lot", "LOT-7", None, LOT, "2026-01-15T00:00:00Z"),
    ("r-order", 2, "order", "LOT-7", "LOT-7-laser",
     order_payload(2, 1.25, ["order_event_corrected", "final_by_timeout"]), "2026-01-20T00:00:00Z"),
    ("r-bal", 1, "balance", "", None, BALANCE, "2026-02-01T00:00:30Z"),
]  # fmt: skip


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    config = load_yaml_text((REPO / "config/example.yaml").read_text())
    config["store"]["path"] = str(tmp_path / "agent.db")
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(config))

    async def fill() -> None:
        async with await open_store(tmp_path / "agent.db") as store:
            for record_id, revision, kind, lot, order, payload, created in RECORDS:
                await store.enqueue_record(
                    OutboxRecord(
                        record_id, revision, kind, lot, order, "t", json.dumps(payload),
                        ns_from_iso(created),
                    )
                )  # fmt: skip

    asyncio.run(fill())
    return path


def export(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "export", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def ids(result: subprocess.CompletedProcess[str]) -> list[tuple[str, int]]:
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return [(line["record_id"], line["revision"]) for line in lines]


def test_jsonl_latest_revisions_by_default_and_all_on_request(config_file: Path) -> None:
    assert ids(export(config_file, "--format", "jsonl")) == [
        ("r-lot", 1),
        ("r-order", 2),
        ("r-bal", 1),
    ]
    assert ids(export(config_file, "--format", "jsonl", "--all-revisions")) == [
        ("r-order", 1),
        ("r-lot", 1),
        ("r-order", 2),
        ("r-bal", 1),
    ]


def test_period_and_kind_select_records(config_file: Path) -> None:
    # Up to the 16th, the order's latest revision was the first.
    january = export(config_file, "--format", "jsonl", "--from", "2026-01-01", "--to", "2026-01-16")
    assert ids(january) == [("r-order", 1), ("r-lot", 1)]
    late = export(config_file, "--format", "jsonl", "--from", "2026-01-20T09:00:00+09:00")
    assert ids(late) == [("r-order", 2), ("r-bal", 1)]  # from is inclusive
    assert ids(export(config_file, "--format", "jsonl", "--kind", "balance")) == [("r-bal", 1)]


def test_csv_has_one_row_per_record_with_the_main_fields(config_file: Path) -> None:
    output = config_file.parent / "out" / "records.csv"
    output.parent.mkdir()
    result = export(config_file, "--format", "csv", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "3 record(s) written" in result.stderr
    with output.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [row["record_id"] for row in rows] == ["r-lot", "r-order", "r-bal"]
    order = rows[1]
    assert order == {
        "record_id": "r-order", "revision": "2", "kind": "order", "lot_id": "LOT-7",
        "order_id": "LOT-7-laser", "equipment_id": "laser-cutter",
        "start": "2026-01-09T23:00:00.000Z", "end": "2026-01-09T23:30:00.000Z",
        "energy_kwh": "1.25", "uncertainty_kwh": "0.002", "co2e_kg": "0.5425",
        "measured_share": "1.0", "quantity_good": "20",
        "flags": "order_event_corrected;final_by_timeout",
    }  # fmt: skip
    lot, balance = rows[0], rows[2]
    assert (lot["order_id"], lot["quantity_good"], lot["start"], lot["flags"]) == ("", "", "", "")
    assert (balance["kind"], balance["lot_id"], balance["energy_kwh"]) == ("balance", "", "9.5")
    assert balance["flags"] == "meter_gap"


def test_csv_to_stdout_parses_back(config_file: Path) -> None:
    result = export(config_file, "--format", "csv", "--kind", "order", "--all-revisions")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["record_id"], row["revision"], row["energy_kwh"]) for row in rows] == [
        ("r-order", "1", "1.0"),
        ("r-order", "2", "1.25"),
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "xml"], ["argument --format", "'xml'"]),
        (["--format", "csv", "--kind", "lots"], ["argument --kind", "'lots'"]),
        (["--format", "csv", "--from", "last week"], ["argument --from", "'last week'"]),
        (["--format", "csv", "--to", "2026-01-31T08:00:00"], ["argument --to", "no UTC offset"]),
        (
            ["--format", "csv", "--from", "2026-02-01", "--to", "2026-01-01"],
            ["argument --from", "2026-02-01T00:00:00.000Z is not before --to"],
        ),
        (
            ["--format", "csv", "--output", "/nonexistent/dir/out.csv"],
            ["argument --output", "'/nonexistent/dir/out.csv'"],
        ),
    ],
)
def test_bad_arguments_exit_2_naming_argument_and_value(
    config_file: Path, args: list[str], words: list[str]
) -> None:
    result = export(config_file, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_without_a_database_it_says_so(tmp_path: Path) -> None:
    config = load_yaml_text((REPO / "config/example.yaml").read_text())
    config["store"]["path"] = str(tmp_path / "none.db")
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(config))
    result = export(path, "--format", "jsonl")
    assert result.returncode == 1
    assert "no database at" in result.stderr


async def test_store_selects_records_by_creation_time_kind_and_revision(
    config_file: Path,
) -> None:
    async with await open_store(config_file.parent / "agent.db") as store:
        everything = await store.records_created_between(latest_only=False)
        assert [(r.record_id, r.revision) for r in everything] == [(r[0], r[1]) for r in RECORDS]
        latest = await store.records_created_between()
        assert [(r.record_id, r.revision) for r in latest] == [
            ("r-lot", 1), ("r-order", 2), ("r-bal", 1)
        ]  # fmt: skip
        start, end = ns_from_iso("2026-01-15T00:00:00Z"), ns_from_iso("2026-01-20T00:00:00Z")
        window = await store.records_created_between(start, end)  # [from, to)
        assert [(r.record_id, r.revision) for r in window] == [("r-lot", 1)]
        orders = await store.records_created_between(kind="order", to_ns=end)
        assert [(r.record_id, r.revision) for r in orders] == [("r-order", 1)]
        assert await store.records_created_between(kind="balance", to_ns=end) == []
