"""The ``edge-agent`` command: run | check [--probe] | lots | export."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.accounting import schedules
from edge_agent.attribution.series import float32_step
from edge_agent.config import AgentConfig, load_config, shaping_power_point
from edge_agent.config.factor_tables import describe
from edge_agent.config.models import ENERGY_UNITS_TO_KWH, ModbusPoint, PointBase
from edge_agent.config.preflight import preflight
from edge_agent.domain import PointRole, Quality, Sample, iso_from_ns
from edge_agent.errors import ConfigError
from edge_agent.logfmt import configure_logging
from edge_agent.plausibility import (
    FLOAT_COUNTER_STEP_KWH,
    Implausible,
    PowerLimit,
    check_counter_moves,
    check_sample,
    counter_check_wanted,
    power_limits,
    to_kw,
)
from edge_agent.sources.modbus.decode import decode_every_order

if TYPE_CHECKING:
    from edge_agent.sources.base import Source

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    # The adapters log once when a device goes unavailable and once when it recovers; the
    # libraries would log every timeout and every unencrypted session.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    if args.command == "hub":
        from edge_agent.hub.cli import main as hub_main  # noqa: PLC0415

        return hub_main(args)
    if args.command != "run":
        return _with_config(args)
    gc.disable()  # until the agent has started: see app.end_startup_gc_pause
    try:
        return _with_config(args)
    finally:
        gc.enable()  # on every way out, a start that failed included


def _with_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.config))
        if args.command in ("check", "run"):
            problems = preflight(config)
            if problems:
                raise ConfigError(problems)
    except ConfigError as exc:
        exc.report(args.config)
        return EXIT_CONFIG
    if args.command == "check":
        print(summarise(config))
        if args.probe:
            return asyncio.run(_probe(config))
        return EXIT_OK
    if args.command == "lots":
        return asyncio.run(_lots(config, args.limit, args.json))
    if args.command == "export":
        return _export(config, args)
    from edge_agent.app import run_agent  # noqa: PLC0415 (keeps `check` light)

    return asyncio.run(run_agent(config, Path(args.config)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object a line"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="poll meters, attribute energy, publish records")
    check = commands.add_parser("check", help="validate the configuration (and probe meters)")
    check.add_argument("--probe", action="store_true", help="read every meter point once")
    lots = commands.add_parser("lots", help="recent records in the local database")
    lots.add_argument("--limit", type=int, default=20)
    lots.add_argument("--json", action="store_true", help="print the record payloads")
    from edge_agent.export import FORMATS, KINDS, parse_time  # noqa: PLC0415
    from edge_agent.hub.cli import add_parser as add_hub_parser  # noqa: PLC0415

    add_hub_parser(commands)

    export = commands.add_parser(
        "export",
        help="write the stored records of a period as CSV or JSON Lines, or footprints "
        "(PACT 3.0, PACT 2.3, Green x Digital) as a JSON array",
    )
    export.add_argument("-c", "--config", required=True, help="YAML configuration file")
    export.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="csv, jsonl: records; pact-v3, pact-v2, gxd: footprints of lots (docs/carbon.md)",
    )
    export.add_argument(
        "--from",
        dest="from_ns",
        type=parse_time,
        metavar="ISO",
        help="records created at or after this time (footprints: lots that ended at or after "
        "it): 2026-01-31 (midnight UTC) or 2026-01-31T08:00:00+09:00",
    )
    export.add_argument(
        "--to",
        dest="to_ns",
        type=parse_time,
        metavar="ISO",
        help="records created before this (footprints: lots that ended before it)",
    )
    subject = export.add_mutually_exclusive_group()
    subject.add_argument("--lot", metavar="LOT_ID", help="footprints: this lot only")
    subject.add_argument(
        "--product",
        metavar="PRODUCT_ID",
        help="footprints: one footprint of this product over --from .. --to",
    )
    export.add_argument(
        "--footprint-config",
        metavar="PATH",
        help="footprints: a YAML file with the footprint section's keys (instead of the "
        "configuration's footprint section)",
    )
    export.add_argument("--kind", choices=KINDS, help="only records of this kind")
    export.add_argument(
        "--all-revisions",
        action="store_true",
        help="every revision (default: the latest of each record_id in the period)",
    )
    export.add_argument("--output", metavar="PATH", help="write here (default: standard output)")
    for sub in (run, check, lots):
        sub.add_argument("-c", "--config", required=True, help="YAML configuration file")
    return parser


def summarise(config: AgentConfig) -> str:
    by_protocol = Counter(meter.protocol for meter in config.meters)
    points = sum(len(meter.points) for meter in config.meters)
    lines = [
        f"configuration OK: site {config.site.id} ({config.site.name or 'unnamed'}, {config.site.country})",
        f"  meters:    {len(config.meters)} ("
        + ", ".join(f"{count} {name}" for name, count in sorted(by_protocol.items()))
        + f"), {points} points",
        f"  equipment: {len(config.equipment)} ("
        + (", ".join(item.id for item in config.equipment) or "none")
        + ")",
        f"  broker:    {config.mqtt.host}:{config.mqtt.port}"
        f"{' (TLS)' if config.mqtt.tls else ''}, client id {config.client_id}",
        f"  store:     {config.store.path} (samples kept {config.store.retention_days:g} days)",
        "  factors:   "
        + (
            ", ".join(
                f"{carrier} {name} {describe(schedule)} ({schedule[0].source}, "
                f"{schedule[0].version})"
                for carrier, sets in schedules(config).items()
                for name, schedule in sets.items()
            )
            or "none"
        ),
    ]
    return "\n".join(lines)


# The probe reads a counter twice this far apart when its meter's power is high enough to see it
# move (edge_agent.plausibility.check_counter_moves): the only wait it adds, once for all meters.
PROBE_RECHECK_S = 1.5


@dataclass(frozen=True, slots=True)
class ProbeRow:
    """One point as the probe shows it: the sample, the register words and the Modbus point
    it was decoded with (None for OPC UA or a failed read), and what is implausible about it."""

    sample: Sample
    point: ModbusPoint | None = None
    words: tuple[int, ...] | None = None
    finding: Implausible | None = None


async def _probe(config: AgentConfig) -> int:
    from edge_agent.clock import SystemClock  # noqa: PLC0415
    from edge_agent.sources.base import build_sources  # noqa: PLC0415

    sources = build_sources(config, SystemClock())
    limits = power_limits(config)
    try:
        rows = [row for source in sources for row in await _probe_read(source)]
        rows = [replace(r, finding=check_sample(r.sample, limits.get(r.sample.meter_id)))
                for r in rows]  # fmt: skip
        checks = plan_counter_checks(config, rows, limits, PROBE_RECHECK_S)
        if checks:
            await asyncio.sleep(PROBE_RECHECK_S)
            again: list[Sample] = []
            for source in sources:
                wanted = [m for m in source.meter_ids if m in checks]
                if wanted:
                    again += await source.read_now(wanted)
            rows = judge_counter_moves(config, rows, again, limits)
    finally:
        for source in sources:
            await source.close()
    print()
    print(f"{'meter':<16} {'point':<18} {'value':>16} {'unit':<6} quality")
    for row in rows:
        print(format_probe_row(row.sample, row.finding))
        for line in format_registers(row):
            print(line)
    failed_meters = sorted(
        {r.sample.meter_id for r in rows if r.sample.quality is not Quality.GOOD}
    )
    implausible = [r.finding for r in rows if r.finding is not None]
    if failed_meters:
        print(f"\n{len(failed_meters)} meter(s) failed: {', '.join(failed_meters)}")
    if implausible:
        print(f"\n{len(implausible)} implausible value(s):")
        for finding in implausible:
            print(f"  {finding.describe()}")
        print('  (docs/troubleshooting.md, "The probe says implausible")')
    if failed_meters or implausible:
        return EXIT_FAILED
    print("\nall meters answered, every value plausible")
    return EXIT_OK


async def _probe_read(source: Source) -> list[ProbeRow]:
    from edge_agent.sources.modbus.adapter import ModbusConnection  # noqa: PLC0415

    if isinstance(source, ModbusConnection):
        reads = await source.read_now_raw(list(source.meter_ids))
        return [ProbeRow(read.sample, read.point, read.words) for read in reads]
    return [ProbeRow(sample) for sample in await source.read_now(list(source.meter_ids))]


def counter_resolution_kwh(point: PointBase, value: float) -> float:
    """The step of a counter register near ``value``, in kWh: an integer register's scale, a
    float's own step but at least FLOAT_COUNTER_STEP_KWH (OPC UA: that)."""
    factor = ENERGY_UNITS_TO_KWH.get(point.unit, 1.0)
    if isinstance(point, ModbusPoint) and not point.type.startswith("float"):
        return abs(point.scale) * factor
    step = 0.0
    if isinstance(point, ModbusPoint) and point.type == "float32":
        step = float32_step(value) * abs(point.scale) * factor
    return max(step, FLOAT_COUNTER_STEP_KWH)


def _power_kw(rows: Sequence[ProbeRow] | Sequence[Sample], meter_id: str, name: str) -> float:
    """The meter's power in kW; NaN when unread or itself implausible (nothing to judge by)."""
    for row in rows:
        sample = row.sample if isinstance(row, ProbeRow) else row
        if isinstance(row, ProbeRow) and row.finding is not None:
            continue
        if (sample.meter_id, sample.point) == (meter_id, name) and sample.value is not None:
            return to_kw(sample.value, sample.unit) or 0.0
    return math.nan


def plan_counter_checks(
    config: AgentConfig, rows: Sequence[ProbeRow], limits: dict[str, PowerLimit], wait_s: float
) -> set[str]:
    """Meters whose energy counter is to be read again ``wait_s`` later (pure)."""
    wanted: set[str] = set()
    for row in rows:
        sample = row.sample
        meter = config.meter(sample.meter_id)
        power = shaping_power_point(meter.points)
        if (
            sample.role is PointRole.ENERGY and row.finding is None and power is not None
            and sample.quality is Quality.GOOD and sample.value is not None
            and counter_check_wanted(
                _power_kw(rows, sample.meter_id, power), limits.get(sample.meter_id),
                counter_resolution_kwh(meter.points[sample.point], sample.value), wait_s,
            )
        ):  # fmt: skip
            wanted.add(sample.meter_id)
    return wanted


def judge_counter_moves(
    config: AgentConfig,
    rows: Sequence[ProbeRow],
    again: Sequence[Sample],
    limits: dict[str, PowerLimit],
) -> list[ProbeRow]:
    """``rows`` with counter findings from the second read ``again`` (pure)."""
    out = []
    for row in rows:
        first = row.sample
        limit = limits.get(first.meter_id)
        second = next((s for s in again if (s.meter_id, s.point) == (first.meter_id, first.point)
                       and s.quality is Quality.GOOD), None)  # fmt: skip
        power = shaping_power_point(config.meter(first.meter_id).points)
        if (
            first.role is PointRole.ENERGY and row.finding is None and second is not None
            and limit is not None and power is not None and first.value is not None
        ):  # fmt: skip
            powers = (
                _power_kw(rows, first.meter_id, power),
                _power_kw(again, first.meter_id, power),
            )
            power_kw = min(powers) if all(map(math.isfinite, powers)) else math.nan
            point = config.meter(first.meter_id).points[first.point]
            resolution = counter_resolution_kwh(point, max(first.value, second.value or 0.0))
            finding = check_counter_moves(first, second, power_kw, limit, resolution)
            out.append(replace(row, finding=finding))
        else:
            out.append(row)
    return out


def format_probe_row(sample: Sample, finding: Implausible | None = None) -> str:
    if sample.quality is Quality.GOOD and sample.value is not None:
        shown = f"{sample.value:16.6g}"
        status = "good" + (f" ({sample.state})" if sample.state else "")
        if finding is not None:
            status = f"IMPLAUSIBLE ({finding.code}): {finding.reason}"
    else:
        shown = f"{'-':>16}"
        status = f"{sample.quality.value}: {sample.detail}"
    return f"{sample.meter_id:<16} {sample.point:<18} {shown} {sample.unit:<6} {status}"


def format_registers(row: ProbeRow) -> list[str]:
    """For a 32/64-bit Modbus point: its register words and the value under each of the four
    word/byte orders, the configured one marked (pure)."""
    point, words = row.point, row.words
    if point is None or words is None or point.register_count < 2:
        return []
    span = f"{point.register_type} {point.address}..{point.address + len(words) - 1}"
    raw = " ".join(f"0x{word:04X}" for word in words)
    shown = []
    for decoding in decode_every_order(words, point):
        value = f"{decoding.value:.6g}" if decoding.value is not None else "not a number"
        mark = " (configured)" if decoding.configured else ""
        shown.append(f"{decoding.order}{mark} {value}")
    unit = f" {point.unit}" if point.unit else ""
    return [
        f"{'':<17}registers {span} ({point.type}): {raw}",
        f"{'':<17}as {point.type}{unit}: " + " | ".join(shown),
    ]


async def _lots(config: AgentConfig, limit: int, as_json: bool) -> int:
    from edge_agent.store import open_store  # noqa: PLC0415

    if not config.store.path.exists():
        print(f"no database at {config.store.path} yet (the agent has not run)", file=sys.stderr)
        return EXIT_FAILED
    store = await open_store(config.store.path)
    try:
        rows = await store.recent_records(limit)
        stats = await store.outbox_stats()
        rejected = await store.rejected_counts()
        held = await store.held_count()
    finally:
        await store.close()
    if as_json:
        for row in rows:
            print(row.payload)
        return EXIT_OK
    print(
        f"{'created':<24} {'kind':<5} {'lot':<14} {'order':<16} {'kWh':>10} {'kg CO2e':>10} rev state"
    )
    for row in rows:
        payload = json.loads(row.payload)
        state = f"sent {iso_from_ns(row.sent_ns)}" if row.sent_ns else "unsent"
        if row.kind == "balance":
            print(
                f"{iso_from_ns(row.created_ns):<24} {format_balance(payload)} rev {row.revision} {state}"
            )
            continue
        print(
            f"{iso_from_ns(row.created_ns):<24} {row.kind:<5} {payload.get('lot_id', ''):<14} "
            f"{payload.get('order_id') or '-':<16} {payload.get('energy_kwh', 0.0):>10.4f} "
            f"{payload.get('co2e_kg', 0.0):>10.4f} {row.revision:>3} {state}"
        )
    print(f"\noutbox: {stats.unsent_count} unsent")
    print(
        "MES events rejected: "
        + (", ".join(f"{code} {count}" for code, count in rejected.items()) or "none")
        + f"; held waiting for their start: {held}"
    )
    return EXIT_OK


def _export(config: AgentConfig, args: argparse.Namespace) -> int:
    from edge_agent.export import (  # noqa: PLC0415
        EXIT_USAGE,
        FOOTPRINT_FORMATS,
        export,
        export_footprints,
        usage_error,
    )

    if args.format in FOOTPRINT_FORMATS:
        return export_footprints(
            config.store.path,
            fmt=args.format,
            site=config.site,
            # The configuration's footprint section, once AgentConfig has one.
            footprint=getattr(config, "footprint", None),
            footprint_file=args.footprint_config,
            from_ns=args.from_ns,
            to_ns=args.to_ns,
            lot_id=args.lot,
            product_id=args.product,
            kind=args.kind,
            all_revisions=args.all_revisions,
            output=args.output,
        )
    for option, value in (
        ("--lot", args.lot),
        ("--product", args.product),
        ("--footprint-config", args.footprint_config),
    ):
        if value is not None:
            usage_error(f"argument {option}: only for footprints (--format pact-v3|pact-v2|gxd)")
            return EXIT_USAGE
    return export(
        config.store.path,
        fmt=args.format,
        from_ns=args.from_ns,
        to_ns=args.to_ns,
        kind=args.kind,
        all_revisions=args.all_revisions,
        output=args.output,
    )


def format_balance(payload: dict[str, Any]) -> str:
    """One energy-balance record on one line: the period and where its electricity went."""
    return (
        f"balance {payload.get('start', '?')} +{payload.get('period_s', 0):g} s: "
        f"metered {payload.get('metered_kwh', 0.0):.4f} kWh = orders "
        f"{payload.get('to_orders_kwh', 0.0):.4f} + idle {payload.get('idle_kwh', 0.0):.4f} + "
        f"unallocated {payload.get('unallocated_kwh', 0.0):.4f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
