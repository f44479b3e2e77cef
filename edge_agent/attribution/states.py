"""Machine state derived from active power: thresholds, hysteresis, minimum dwell (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.attribution.model import Reading, StateChange

_LEVELS = ("off", "idle", "running")


def derive_states(
    power_kw: Sequence[Reading],
    idle_above_kw: float,
    running_above_kw: float,
    hysteresis_kw: float = 0.0,
    min_dwell_s: float = 0.0,
) -> list[StateChange]:
    """off below ``idle_above_kw``, running above ``running_above_kw``, idle between.

    A level is left only when power crosses its threshold by more than the hysteresis band, and
    a new state counts only once it has lasted ``min_dwell_s``; its change is dated at the first
    reading that showed it, so short blips never become states.
    """
    thresholds = (idle_above_kw, running_above_kw)
    changes: list[StateChange] = []
    current: int | None = None
    candidate: int | None = None
    candidate_since = 0
    dwell_ns = int(min_dwell_s * 1e9)
    for reading in power_kw:
        level = _level(reading.value, current, thresholds, hysteresis_kw)
        if current is None:
            current = level
            changes.append(StateChange(reading.t_ns, _LEVELS[level]))
            continue
        if level == current:
            candidate = None
            continue
        if candidate != level:
            candidate, candidate_since = level, reading.t_ns
        if reading.t_ns - candidate_since >= dwell_ns:
            current, candidate = level, None
            changes.append(StateChange(candidate_since, _LEVELS[level]))
    return changes


def _level(power: float, current: int | None, thresholds: tuple[float, float], band: float) -> int:
    raw = sum(power > threshold for threshold in thresholds)
    if current is None or raw == current:
        return raw
    # Moving up needs power above threshold + band; moving down needs below threshold - band.
    if raw > current:
        return current + sum(power > t + band for t in thresholds[current:raw])
    return current - sum(power < t - band for t in thresholds[raw:current])
