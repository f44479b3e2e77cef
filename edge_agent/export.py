"""``edge-agent export``: the stored records of a period as CSV or JSON Lines, or footprints.

Records are read from the local outbox (sent or not), selected by the time the agent created
each revision (``created_ns``, UTC): ``--from`` inclusive, ``--to`` exclusive. By default only the
latest revision of each ``record_id`` created in the period is written — what a consumer that
keeps the highest revision held at ``--to``.

Footprints (``--format pact-v3|pact-v2|gxd``, docs/carbon.md) are made from the latest stored
revision of each lot record and the order records it names; there ``--from``/``--to`` select lots
by when they were produced (the lot's ``end``), since a footprint's reference period is
production time. The output is one JSON array.
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

import yaml
from pydantic import ValidationError

from edge_agent.config.footprint import FootprintConfig
from edge_agent.config.loader import format_error
from edge_agent.config.models import SiteConfig
from edge_agent.config.yaml_loading import load_yaml_text
from edge_agent.domain import datetime_from_ns, iso_from_ns, ns_from_datetime, ns_from_iso
from edge_agent.errors import ConfigError, FootprintError
from edge_agent.footprint import (
    FootprintInfo,
    build_gxd,
    build_gxd_product,
    build_pact_v2,
    build_pact_v2_product,
    build_pact_v3,
    build_pact_v3_product,
    lot_footprint_id,
)
from edge_agent.store import OutboxRow, open_store

RECORD_FORMATS = ("csv", "jsonl")
FOOTPRINT_FORMATS = ("pact-v3", "pact-v2", "gxd")
FORMATS = (*RECORD_FORMATS, *FOOTPRINT_FORMATS)
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
        usage_error(
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
        usage_error(f"argument --output: cannot write {output!r} ({exc.strerror})")
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


def usage_error(message: str) -> None:
    print(f"edge-agent export: error: {message}", file=sys.stderr)


# -- footprints ---------------------------------------------------------------------------------

# A lot record is made after the lot's last step ended; a day's margin covers a clock that
# stepped back meanwhile. Lots created before (--from minus this) cannot have ended in the period.
_CREATED_AFTER_END_MARGIN_NS = 86_400 * 1_000_000_000


def load_footprint_config(path: Path) -> FootprintConfig:
    """A ``--footprint-config`` file: the ``footprint`` section's keys (or the whole section
    under a ``footprint:`` key). ConfigError lists every problem with its key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [f"{path}: cannot read the footprint configuration ({exc.strerror})"]
        ) from exc
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    if isinstance(data, dict) and set(data) == {"footprint"}:
        data = data["footprint"]
    if data is None:
        data = {}
    try:
        return FootprintConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            format_error({**error, "loc": ("footprint", *error["loc"])}) for error in exc.errors()
        ]
        raise ConfigError(sorted(set(problems), key=problems.index)) from None


def footprint_info(
    site: SiteConfig, section: FootprintConfig | None, footprint_file: str | None
) -> FootprintInfo:
    """The footprints' information: from ``--footprint-config`` when given, else from the
    configuration's ``footprint`` section (ConfigError names what is missing)."""
    if footprint_file is not None:
        section = load_footprint_config(Path(footprint_file))
    return (section or FootprintConfig()).info(site)


def _lot_end_ns(payload: dict[str, Any]) -> int | None:
    end = payload.get("end")
    if not isinstance(end, str):
        return None
    try:
        return ns_from_iso(end)
    except ValueError:
        return None


class _StoredLot:
    """The stored revisions of one lot record, the latest with its payload."""

    def __init__(self, rows: list[OutboxRow]) -> None:
        self.rows = sorted(rows, key=lambda row: row.revision)
        self.latest = self.rows[-1]
        self.payload: dict[str, Any] = json.loads(self.latest.payload)
        self.lot_id = str(self.payload.get("lot_id", self.latest.lot_id))
        self.end_ns = _lot_end_ns(self.payload)

    @property
    def order_record_ids(self) -> list[str]:
        return [
            str(line["record_id"])
            for line in self.payload.get("orders") or []
            if isinstance(line, dict) and "record_id" in line
        ]

    def order_rows(self, orders: dict[str, list[OutboxRow]]) -> list[OutboxRow]:
        """The order records the lot names, at the revision it names, else the highest stored
        (the lot is then older than a correction; its next revision will name it)."""
        used: list[OutboxRow] = []
        for line in self.payload.get("orders") or []:
            if not isinstance(line, dict):
                continue
            rows = orders.get(str(line.get("record_id")), [])
            named = [row for row in rows if row.revision == line.get("revision")]
            used.extend(named or rows[-1:])
        return used

    def order_payloads(self, orders: dict[str, list[OutboxRow]]) -> list[dict[str, Any]]:
        return [json.loads(row.payload) for row in self.order_rows(orders)]

    def created_ns(self, orders: dict[str, list[OutboxRow]]) -> int:
        """When the data behind the footprint were complete: the newest record it uses."""
        return max([self.latest.created_ns, *(row.created_ns for row in self.order_rows(orders))])


async def _read_lots(
    store_path: Path, *, lot_id: str | None, from_ns: int | None
) -> tuple[list[_StoredLot], dict[str, list[OutboxRow]]]:
    """The lot records (every revision) and the order records their latest revisions name."""
    store = await open_store(store_path)
    try:
        created_from = None if from_ns is None else from_ns - _CREATED_AFTER_END_MARGIN_NS
        rows = await store.lot_record_revisions(lot_id=lot_id, created_from_ns=created_from)
        by_record: dict[str, list[OutboxRow]] = {}
        for row in rows:
            by_record.setdefault(row.record_id, []).append(row)
        lots = [_StoredLot(revisions) for revisions in by_record.values()]
        wanted = [rid for lot in lots for rid in lot.order_record_ids]
        orders: dict[str, list[OutboxRow]] = {}
        for row in await store.record_revisions(wanted):
            orders.setdefault(row.record_id, []).append(row)
        return lots, orders
    finally:
        await store.close()


def _lot_footprint(
    fmt: str, lot: _StoredLot, orders: dict[str, list[OutboxRow]], info: FootprintInfo
) -> dict[str, Any]:
    order_payloads = lot.order_payloads(orders)
    version = lot.latest.revision
    if fmt == "pact-v3":
        site_id = str(lot.payload.get("site_id", ""))
        preceding = [
            lot_footprint_id(fmt, site_id, lot.lot_id, row.revision)
            for row in lot.rows
            if row.revision < version
        ]
        return build_pact_v3(
            lot.payload,
            order_payloads,
            info,
            created_at=datetime_from_ns(lot.created_ns(orders)),
            version=version,
            preceding_ids=preceding,
        )
    # 2.x: one id for every version; created by the first stored revision, updated by the last.
    first, last = lot.rows[0].created_ns, lot.created_ns(orders)
    build = build_pact_v2 if fmt == "pact-v2" else build_gxd
    return build(
        lot.payload,
        order_payloads,
        info,
        created_at=datetime_from_ns(first),
        updated_at=datetime_from_ns(last) if len(lot.rows) > 1 else None,
        version=version,
    )


def _product_footprint(
    fmt: str,
    lots: list[_StoredLot],
    orders: dict[str, list[OutboxRow]],
    info: FootprintInfo,
    from_ns: int,
    to_ns: int,
) -> dict[str, Any]:
    inputs = [(lot.payload, lot.order_payloads(orders)) for lot in lots]
    start, end = datetime_from_ns(from_ns), datetime_from_ns(to_ns)
    created = datetime_from_ns(max(lot.created_ns(orders) for lot in lots))
    if fmt == "pact-v3":
        return build_pact_v3_product(inputs, info, start, end, created_at=created)
    build = build_pact_v2_product if fmt == "pact-v2" else build_gxd_product
    return build(inputs, info, start, end, created_at=created)


def _footprint_usage_problem(
    *,
    from_ns: int | None,
    to_ns: int | None,
    lot_id: str | None,
    product_id: str | None,
    kind: str | None,
    all_revisions: bool,
) -> str | None:
    if kind is not None:
        return "argument --kind: footprints are made from lot records (leave --kind out)"
    if all_revisions:
        return "argument --all-revisions: footprints use the latest revision of each lot"
    if lot_id is not None and (from_ns is not None or to_ns is not None):
        return "argument --lot: a lot's footprint takes no period (leave --from/--to out)"
    if product_id is not None and (from_ns is None or to_ns is None):
        return "argument --product: needs --from and --to (the footprint's reference period)"
    if from_ns is not None and to_ns is not None and from_ns >= to_ns:
        return f"argument --from: {iso_from_ns(from_ns)} is not before --to {iso_from_ns(to_ns)}"
    return None


def export_footprints(
    store_path: Path,
    *,
    fmt: str,
    site: SiteConfig,
    footprint: FootprintConfig | None = None,
    footprint_file: str | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    lot_id: str | None = None,
    product_id: str | None = None,
    kind: str | None = None,
    all_revisions: bool = False,
    output: str | None = None,
) -> int:
    """Write footprints as one JSON array; the exit status: 0, 1 when a lot was skipped (its
    reason on stderr) or nothing was found, 2 for a bad argument or footprint configuration."""
    problem = _footprint_usage_problem(
        from_ns=from_ns,
        to_ns=to_ns,
        lot_id=lot_id,
        product_id=product_id,
        kind=kind,
        all_revisions=all_revisions,
    )
    if problem is not None:
        usage_error(problem)
        return EXIT_USAGE
    try:
        info = footprint_info(site, footprint, footprint_file)
    except ConfigError as exc:
        exc.report(str(footprint_file or "footprint"))
        return EXIT_USAGE
    if not store_path.exists():
        print(f"no database at {store_path} yet (the agent has not run)", file=sys.stderr)
        return EXIT_FAILED
    lots, orders = asyncio.run(_read_lots(store_path, lot_id=lot_id, from_ns=from_ns))
    selected = _select_lots(lots, from_ns=from_ns, to_ns=to_ns, product_id=product_id)
    footprints: list[dict[str, Any]] = []
    skipped = 0
    buildable: list[_StoredLot] = []
    for lot in selected:
        try:
            footprint_json = _lot_footprint(fmt, lot, orders, info)
        except FootprintError as exc:
            _skip(f"lot {lot.lot_id}", exc)
            skipped += 1
            continue
        if product_id is None:
            footprints.append(footprint_json)
        else:
            buildable.append(lot)
    status = EXIT_FAILED if skipped else EXIT_OK
    if not selected:
        what = f"lot {lot_id}" if lot_id is not None else f"lot of product {product_id}"
        where = "" if lot_id is not None else " that ended in the period"
        print(f"edge-agent export: no {what}{where} in {store_path}", file=sys.stderr)
        status = EXIT_FAILED
    # from_ns and to_ns are given with --product (_footprint_usage_problem).
    if product_id is not None and buildable and from_ns is not None and to_ns is not None:
        try:
            footprints.append(_product_footprint(fmt, buildable, orders, info, from_ns, to_ns))
        except FootprintError as exc:
            _skip(f"product {product_id}", exc)
            status = EXIT_FAILED
    return _write_footprints(footprints, output, status)


def _select_lots(
    lots: list[_StoredLot], *, from_ns: int | None, to_ns: int | None, product_id: str | None
) -> list[_StoredLot]:
    """Lots that ended in [from, to) (of the product, when given), by end then id. A lot
    without an end is kept only when no period is asked for (its footprint then says why)."""
    chosen = []
    for lot in lots:
        if product_id is not None and lot.payload.get("product_id") != product_id:
            continue
        if lot.end_ns is None:
            if from_ns is None and to_ns is None:
                chosen.append(lot)
            continue
        if (from_ns is None or lot.end_ns >= from_ns) and (to_ns is None or lot.end_ns < to_ns):
            chosen.append(lot)
    return sorted(chosen, key=lambda lot: (lot.end_ns or 0, lot.lot_id))


def _skip(what: str, exc: FootprintError) -> None:
    reason = str(exc)
    # The builders' messages start with the lot they name; do not say it twice.
    prefix = f"{what}: "
    reason = reason.removeprefix(prefix)
    print(f"edge-agent export: skipped {what}: {reason}", file=sys.stderr)


def _write_footprints(footprints: list[dict[str, Any]], output: str | None, status: int) -> int:
    text = json.dumps(footprints, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return status
    try:
        with open(output, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
    except OSError as exc:
        usage_error(f"argument --output: cannot write {output!r} ({exc.strerror})")
        return EXIT_USAGE
    print(f"{len(footprints)} footprint(s) written to {output}", file=sys.stderr)
    return status
