"""The health judgement (pure) and how the monitor announces it: once when a problem starts,
once when it ends, into the retained status message's problems."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edge_agent.config import parse_config
from edge_agent.config.models import HealthConfig
from edge_agent.domain import PointRole, Quality, Sample
from edge_agent.observe.health import Snapshot, judge
from edge_agent.observe.monitor import AgentProbes, Monitor
from edge_agent.store import OutboxStats

LIMITS = HealthConfig(stale_meter_s=60, broker_unreachable_s=30, outbox_max_age_s=600)


def snapshot(**changes: Any) -> Snapshot:
    values: dict[str, Any] = {
        "taken_ns": 0,
        "meter_good_age_s": {"m1": 1.0},
        "uptime_s": 1000.0,
        "broker_unreachable_s": None,
        "store_failing_s": None,
        "mes_blocked_s": None,
        "outbox_depth": 0,
        "outbox_oldest_age_s": None,
        "event_loop_lag_s": 0.01,
    }
    return Snapshot(**{**values, **changes})


def codes(s: Snapshot) -> list[str]:
    return [reason.code for reason in judge(s, LIMITS)]


def test_a_healthy_agent_has_no_reasons() -> None:
    assert codes(snapshot()) == []


def test_each_threshold_gives_its_reason_only_past_it() -> None:
    assert codes(snapshot(meter_good_age_s={"m1": 59.0, "m2": 61.0})) == ["stale_meter"]
    assert codes(snapshot(meter_good_age_s={"m1": None}, uptime_s=30)) == []  # starting
    assert codes(snapshot(meter_good_age_s={"m1": None}, uptime_s=61)) == ["stale_meter"]
    assert codes(snapshot(broker_unreachable_s=29.0)) == []
    assert codes(snapshot(broker_unreachable_s=31.0)) == ["broker_unreachable"]
    assert codes(snapshot(outbox_depth=3, outbox_oldest_age_s=601.0)) == ["outbox_stale"]
    assert codes(snapshot(store_failing_s=31.0)) == ["store_failing"]
    assert codes(snapshot(mes_blocked_s=0.5)) == ["mes_intake_stuck"]
    assert codes(snapshot(event_loop_lag_s=6.0)) == ["event_loop_lag"]
    detail = judge(snapshot(meter_good_age_s={"m2": 61.4}), LIMITS)[0].detail
    assert detail == "meter m2: last good reading 61 s ago (health.stale_meter_s 60)"


def test_the_monitor_reports_a_problem_when_it_starts_and_when_it_ends(tmp_path: Path) -> None:
    config = parse_config(
        {
            "site": {"id": "s1"},
            "meters": [
                {
                    "id": "m1", "protocol": "modbus_tcp", "host": "127.0.0.1",
                    "points": {"energy": {"address": 0, "type": "float32", "unit": "kWh",
                                          "role": "energy"}},
                }
            ],
            "health": {"stale_meter_s": 60},
        },
        tmp_path,
    )  # fmt: skip
    reported: list[tuple[str, str | None]] = []

    async def stats() -> OutboxStats:
        return OutboxStats(0, 0, None, 0)

    probes = AgentProbes(
        outbox_stats=stats,
        broker_connected=lambda: True,
        store_failing_since=lambda: None,
        mes_blocked_since=lambda: None,
        counters=dict,
        mes_rejected=dict,
        report_problem=lambda code, detail: reported.append((code, detail)),
    )
    monitor = Monitor(config, probes)
    good = Sample(0, "m1", "energy", PointRole.ENERGY, "kWh", 1.0, Quality.GOOD)
    monitor.on_samples([good], latency_s=0.01)
    asyncio.run(monitor.tick())
    assert reported == []
    assert monitor.reasons == ()
    monitor._last_good["m1"] -= 120  # two minutes without a good reading
    asyncio.run(monitor.tick())
    monitor._last_good["m1"] -= 5
    asyncio.run(monitor.tick())  # still stale, a longer age: not reported again
    assert [code for code, _ in reported] == ["stale_meter"]
    monitor.on_samples([good])
    asyncio.run(monitor.tick())
    assert reported[-1] == ("stale_meter", None)
