"""Is the agent doing its job? A pure judgement over one snapshot of its state.

The snapshot is taken by :mod:`edge_agent.observe.monitor` every second; the same reasons feed
``/healthz`` (503 with the reasons), the retained status message (as problems) and the logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edge_agent.config.models import HealthConfig


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the monitor saw; ages in seconds (None: not applicable or never)."""

    taken_ns: int
    meter_good_age_s: Mapping[str, float | None]  # None: no good reading since start
    uptime_s: float
    broker_unreachable_s: float | None  # None: connected
    store_failing_s: float | None  # None: the last sample write worked
    mes_blocked_s: float | None  # None: the MES intake commits
    outbox_depth: int
    outbox_oldest_age_s: float | None
    event_loop_lag_s: float
    counters: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    detail: str


def judge(snapshot: Snapshot, limits: HealthConfig) -> list[Reason]:
    """Every way the agent is failing its job now; empty when healthy."""
    reasons: list[Reason] = []
    for meter_id, age in sorted(snapshot.meter_good_age_s.items()):
        # A meter that never answered counts from the agent's start.
        waited = age if age is not None else snapshot.uptime_s
        if waited > limits.stale_meter_s:
            what = f"{age:.0f} s ago" if age is not None else "never since start"
            reasons.append(
                Reason(
                    "stale_meter",
                    f"meter {meter_id}: last good reading {what} "
                    f"(health.stale_meter_s {limits.stale_meter_s:g})",
                )
            )
    unreachable = snapshot.broker_unreachable_s
    if unreachable is not None and unreachable > limits.broker_unreachable_s:
        reasons.append(
            Reason(
                "broker_unreachable",
                f"MQTT broker unreachable for {unreachable:.0f} s "
                f"(health.broker_unreachable_s {limits.broker_unreachable_s:g})",
            )
        )
    failing = snapshot.store_failing_s
    if failing is not None and failing > limits.store_failing_s:
        reasons.append(
            Reason(
                "store_failing",
                f"samples not written for {failing:.0f} s "
                f"(health.store_failing_s {limits.store_failing_s:g})",
            )
        )
    if snapshot.mes_blocked_s is not None:
        reasons.append(
            Reason(
                "mes_intake_stuck",
                f"MES events not committed for {snapshot.mes_blocked_s:.0f} s",
            )
        )
    oldest = snapshot.outbox_oldest_age_s
    if oldest is not None and oldest > limits.outbox_max_age_s:
        reasons.append(
            Reason(
                "outbox_stale",
                f"{snapshot.outbox_depth} records unpublished, the oldest for {oldest:.0f} s "
                f"(health.outbox_max_age_s {limits.outbox_max_age_s:g})",
            )
        )
    if snapshot.event_loop_lag_s > limits.event_loop_lag_s:
        reasons.append(
            Reason(
                "event_loop_lag",
                f"the event loop ran {snapshot.event_loop_lag_s:.1f} s late "
                f"(health.event_loop_lag_s {limits.event_loop_lag_s:g})",
            )
        )
    return reasons
