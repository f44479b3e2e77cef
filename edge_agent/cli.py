"""The ``edge-agent`` command: run | check [--probe] | lots."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.config import AgentConfig, load_config
from edge_agent.config.preflight import preflight
from edge_agent.domain import Quality, Sample, iso_from_ns
from edge_agent.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The adapters log once when a device goes unavailable and once when it recovers; the
    # libraries would log every timeout and every unencrypted session.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        config = load_config(Path(args.config))
        if args.command in ("check", "run"):
            problems = preflight(config)
            if problems:
                raise ConfigError(problems)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(summarise(config))
        if args.probe:
            return asyncio.run(_probe(config))
        return EXIT_OK
    if args.command == "lots":
        return asyncio.run(_lots(config, args.limit, args.json))
    from edge_agent.app import run_agent  # noqa: PLC0415 (keeps `check` light)

    return asyncio.run(run_agent(config, Path(args.config)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="poll meters, attribute energy, publish records")
    check = commands.add_parser("check", help="validate the configuration (and probe meters)")
    check.add_argument("--probe", action="store_true", help="read every meter point once")
    lots = commands.add_parser("lots", help="recent records in the local database")
    lots.add_argument("--limit", type=int, default=20)
    lots.add_argument("--json", action="store_true", help="print the record payloads")
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
                f"{carrier} {factor.value:g} {factor.unit} ({factor.source}, {factor.version})"
                for carrier, factor in config.emission_factors.items()
            )
            or "none"
        ),
    ]
    return "\n".join(lines)


async def _probe(config: AgentConfig) -> int:
    from edge_agent.clock import SystemClock  # noqa: PLC0415
    from edge_agent.sources.base import build_sources  # noqa: PLC0415

    sources = build_sources(config, SystemClock())
    failed_meters: set[str] = set()
    print()
    print(f"{'meter':<16} {'point':<18} {'value':>16} {'unit':<6} quality")
    try:
        for source in sources:
            samples = await source.read_now(list(source.meter_ids))
            for sample in samples:
                print(format_probe_row(sample))
                if sample.quality is not Quality.GOOD:
                    failed_meters.add(sample.meter_id)
    finally:
        for source in sources:
            await source.close()
    if failed_meters:
        print(f"\n{len(failed_meters)} meter(s) failed: {', '.join(sorted(failed_meters))}")
        return EXIT_FAILED
    print("\nall meters answered")
    return EXIT_OK


def format_probe_row(sample: Sample) -> str:
    if sample.quality is Quality.GOOD and sample.value is not None:
        shown = f"{sample.value:16.6g}"
        status = "good" + (f" ({sample.state})" if sample.state else "")
    else:
        shown = f"{'-':>16}"
        status = f"{sample.quality.value}: {sample.detail}"
    return f"{sample.meter_id:<16} {sample.point:<18} {shown} {sample.unit:<6} {status}"


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
