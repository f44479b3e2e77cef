"""``edge-agent export``: the stored records of a period as CSV or JSON Lines.

Records are read from the local outbox (sent or not), selected by the time the agent created
each revision (``created_ns``, UTC): ``--from`` inclusive, ``--to`` exclusive. By default only the
latest revision of each ``record_id`` created in the period is written — what a consumer that
keeps the highest revision held at ``--to``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from edge_agent.domain import iso_from_ns, ns_from_datetime
from edge_agent.store import OutboxRow, open_store

FORMATS = ("csv", "jsonl")
KINDS = ("order", "lot", "balance")
CSV_COLUMNS = (
    "record_id", "revision", "kind", "lot_id", "order_id", "equipment_id", "start", "end",
    "energy_kwh", "uncertainty_kwh", "co2e_kg", "measured_share", "quantity_good", "flags",
)  # fmt: skip

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def parse_time(text: str) -> int:
    """``--from``/``--to``: an ISO 8601 date (midnight UTC) or a date-time with a UTC offset,
    as epoch nanoseconds. A date-time without an offset is refused (which zone?)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or date-time "
            "(e.g. 2026-01-31 or 2026-01-31T08:00:00+09:00)"
        ) from None
    if moment.tzinfo is None:
        if "T" in text.upper() or " " in text:
            raise argparse.ArgumentTypeError(
                f"{text!r} has no UTC offset: add one (Z, +09:00) so the period is unambiguous"
            )
        moment = moment.replace(tzinfo=UTC)  # a date alone: midnight UTC
    return ns_from_datetime(moment)


def csv_row(row: OutboxRow) -> list[str]:
    """One record as a CSV row of :data:`CSV_COLUMNS`: the payload's fields (empty when the
    record has none), flags as their codes joined by ';'; a balance record's ``energy_kwh`` is
    its ``metered_kwh``."""
    payload: dict[str, Any] = json.loads(row.payload)
    values: dict[str, Any] = {
        **{name: payload.get(name) for name in CSV_COLUMNS},
        "record_id": row.record_id,
        "revision": row.revision,
        "kind": row.kind,
        "lot_id": payload.get("lot_id", row.lot_id or None),
        "order_id": payload.get("order_id", row.order_id),
        "energy_kwh": payload.get("energy_kwh", payload.get("metered_kwh")),
        "flags": ";".join(
            str(flag.get("code", "")) if isinstance(flag, dict) else str(flag)
            for flag in payload.get("flags") or []
        ),
    }
    return ["" if values[name] is None else str(values[name]) for name in CSV_COLUMNS]


def write_records(rows: list[OutboxRow], fmt: str, output: TextIO) -> None:
    if fmt == "jsonl":
        for row in rows:
            output.write(row.payload + "\n")
        return
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_row(row) for row in rows)


def export(
    store_path: Path,
    *,
    fmt: str,
    from_ns: int | None = None,
    to_ns: int | None = None,
    kind: str | None = None,
    all_revisions: bool = False,
    output: str | None = None,
) -> int:
    """Write the records; the exit status (2 for a bad argument, with a message on stderr)."""
    if from_ns is not None and to_ns is not None and from_ns >= to_ns:
        _usage_error(
            f"argument --from: {iso_from_ns(from_ns)} is not before --to {iso_from_ns(to_ns)}"
        )
        return EXIT_USAGE
    if not store_path.exists():
        print(f"no database at {store_path} yet (the agent has not run)", file=sys.stderr)
        return EXIT_FAILED
    rows = asyncio.run(_read(store_path, from_ns, to_ns, kind, latest_only=not all_revisions))
    if output is None:
        write_records(rows, fmt, sys.stdout)
        return EXIT_OK
    try:
        with open(output, "w", encoding="utf-8", newline="") as stream:
            write_records(rows, fmt, stream)
    except OSError as exc:
        _usage_error(f"argument --output: cannot write {output!r} ({exc.strerror})")
        return EXIT_USAGE
    print(f"{len(rows)} record(s) written to {output}", file=sys.stderr)
    return EXIT_OK


async def _read(
    store_path: Path, from_ns: int | None, to_ns: int | None, kind: str | None, *, latest_only: bool
) -> list[OutboxRow]:
    store = await open_store(store_path)
    try:
        return await store.records_created_between(
            from_ns, to_ns, kind=kind, latest_only=latest_only
        )
    finally:
        await store.close()


def _usage_error(message: str) -> None:
    print(f"edge-agent export: error: {message}", file=sys.stderr)
