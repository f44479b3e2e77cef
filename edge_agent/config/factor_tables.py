"""Time-varying emission factors: the CSV tables that ``emission_factors.<carrier>.table`` names,
turned into factor schedules the attribution core applies.

A table has a header and one row per validity interval, half-open and in time order::

    valid_from,valid_to,value
    2026-07-01T00:00:00+09:00,2026-07-01T01:00:00+09:00,0.452
    2026-07-01T01:00:00+09:00,2026-07-01T02:00:00+09:00,0.441

Every problem names the file, the line, the column and the value.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from edge_agent.attribution.model import Factor
from edge_agent.config.models import AgentConfig, EmissionFactor
from edge_agent.domain import ns_from_datetime

__all__ = ["COLUMNS", "FactorRow", "factor_schedules", "load_factor_tables", "parse_factor_table"]

COLUMNS = ("valid_from", "valid_to", "value")
# A table of more rows than a year of quarter hours is a mistake, not a factor table.
MAX_ROWS = 400_000

FactorRow = tuple[int, int, float]  # valid_from_ns, valid_to_ns, value


class FactorTableError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _instant(text: str, where: str) -> int:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FactorTableError(
            [f"{where}: {text!r} is not an RFC 3339 date-time (e.g. 2026-07-01T00:00:00+09:00)"]
        ) from None
    if moment.tzinfo is None:
        raise FactorTableError([f"{where}: {text!r} has no UTC offset (add Z or +09:00)"])
    return ns_from_datetime(moment)


def parse_factor_table(text: str, name: str) -> tuple[FactorRow, ...]:
    """Rows in time order, checked: a header of :data:`COLUMNS`, valid_to after valid_from,
    no overlap, values finite and not negative. Gaps are allowed (the record flags them)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [c.strip() for c in header] != list(COLUMNS):
        raise FactorTableError(
            [f"{name}:1: header {header!r} is not valid: expected {','.join(COLUMNS)}"]
        )
    rows: list[FactorRow] = []
    problems: list[str] = []
    for line, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        where = f"{name}:{line}"
        if len(fields) != len(COLUMNS):
            problems.append(f"{where}: {len(fields)} columns, expected {len(COLUMNS)}")
            continue
        try:
            start = _instant(fields[0], f"{where} valid_from")
            end = _instant(fields[1], f"{where} valid_to")
        except FactorTableError as exc:
            problems += exc.problems
            continue
        try:
            value = float(fields[2])
        except ValueError:
            problems.append(f"{where} value: {fields[2]!r} is not a number")
            continue
        if not math.isfinite(value) or value < 0:
            problems.append(f"{where} value: {fields[2]!r} must be a finite number >= 0")
        elif end <= start:
            problems.append(f"{where} valid_to: {fields[1]!r} is not after valid_from")
        elif rows and start < rows[-1][1]:
            problems.append(
                f"{where} valid_from: {fields[0]!r} is before the previous row's valid_to "
                "(rows must be in time order and must not overlap)"
            )
        else:
            rows.append((start, end, value))
        if len(rows) > MAX_ROWS:
            problems.append(f"{name}: more than {MAX_ROWS} rows")
            break
    if not rows and not problems:
        problems.append(f"{name}: no rows (expected at least one {','.join(COLUMNS)} line)")
    if problems:
        raise FactorTableError(problems[:20])
    return tuple(rows)


def load_factor_tables(config: AgentConfig) -> tuple[dict[Path, tuple[FactorRow, ...]], list[str]]:
    """Every table the configuration names (paths already resolved), and the problems found,
    each with the key path."""
    tables: dict[Path, tuple[FactorRow, ...]] = {}
    problems: list[str] = []
    for carrier, factors in config.emission_factors.items():
        for index, factor in enumerate(factors):
            if factor.table is None or factor.table in tables:
                continue
            key = f"emission_factors.{carrier}[{index}].table"
            try:
                text = factor.table.read_text(encoding="utf-8")
            except OSError as exc:
                problems.append(f"{key}: cannot read {factor.table} ({exc.strerror})")
                continue
            try:
                tables[factor.table] = parse_factor_table(text, str(factor.table))
            except FactorTableError as exc:
                problems += [f"{key}: {problem}" for problem in exc.problems]
    return tables, problems


def _schedule(
    carrier: str, factor: EmissionFactor, tables: dict[Path, tuple[FactorRow, ...]]
) -> tuple[Factor, ...]:
    def make(value: float, start: int | None, end: int | None) -> Factor:
        return Factor(
            carrier=carrier,
            value=value,
            unit=factor.unit,
            source=factor.source,
            version=factor.version,
            primary=factor.primary,
            set=factor.set,
            geography=factor.geography,
            reference_year=factor.reference_year,
            valid_from_ns=start,
            valid_to_ns=end,
        )

    if factor.table is None:
        assert factor.value is not None
        return (make(factor.value, None, None),)
    return tuple(make(value, start, end) for start, end, value in tables[factor.table])


def factor_schedules(
    config: AgentConfig, tables: dict[Path, tuple[FactorRow, ...]]
) -> dict[str, dict[str, tuple[Factor, ...]]]:
    """carrier -> set -> the factors in time order (one, for a constant)."""
    return {
        carrier: {factor.set: _schedule(carrier, factor, tables) for factor in factors}
        for carrier, factors in config.emission_factors.items()
    }


def describe(schedule: Sequence[Factor]) -> str:
    """One line for ``edge-agent check``."""
    first = schedule[0]
    if len(schedule) == 1 and first.valid_from_ns is None:
        return f"{first.value:g} {first.unit}"
    values = [factor.value for factor in schedule]
    return f"{len(schedule)} rows, {min(values):g}…{max(values):g} {first.unit}"
