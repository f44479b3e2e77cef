"""The one small interface every protocol adapter implements, and the registry of kinds.

A *source* owns one connection — a Modbus TCP host:port, a serial RTU bus, an OPC UA endpoint —
and every meter configured on it. Meters sharing a connection share one lock (pymodbus clients
are not safe for concurrent requests), meters on different connections never wait on each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from edge_agent.clock import Clock
from edge_agent.config.models import AgentConfig
from edge_agent.domain import PointRole, Quality, Sample
from edge_agent.plausibility import PowerLimit, check_sample

SampleSink = Callable[[Sequence[Sample]], None]
"""Where a source delivers samples; must not block (the shell queues and batches them)."""


class Source(Protocol):
    @property
    def key(self) -> str:
        """Stable name of the connection, e.g. ``modbus_tcp:127.0.0.1:5020`` (logs, metrics)."""
        ...

    @property
    def meter_ids(self) -> tuple[str, ...]: ...

    async def run(self, sink: SampleSink) -> None:
        """Poll (or subscribe) every meter on its own schedule until cancelled.

        Connects, reconnects with backoff, never raises for device trouble: a failed read
        becomes samples with a non-GOOD quality, logged once when a meter goes unavailable and
        once when it recovers.
        """
        ...

    async def read_now(self, meter_ids: Sequence[str]) -> list[Sample]:
        """Read every point of the given meters once, immediately (read-on-event, probe).

        Returns one sample per point; failures are samples with a non-GOOD quality and a
        ``detail`` saying why (timeout, refused, illegal address, wrong unit id, security).
        """
        ...

    async def close(self) -> None: ...


_JUDGED_ROLES = frozenset({PointRole.POWER, PointRole.ENERGY})


class PlausibilityWatch:
    """Logs a meter at WARNING once when its values turn implausible (edge_agent.plausibility:
    power above its equipment's max_power_kw, a negative or absurd counter) and at INFO once
    when a read has none again; a read without any good sample decides nothing. Every source
    keeps one, so a wrong setting is as loud over OPC UA as over Modbus."""

    def __init__(self, limits: Mapping[str, PowerLimit], logger: logging.Logger) -> None:
        self._limits = dict(limits)
        self._log = logger
        self._implausible: set[str] = set()

    def note(self, samples: Sequence[Sample]) -> None:
        """One read's samples (of one meter or several)."""
        if not samples:
            return
        first = samples[0].meter_id
        if all(s.meter_id == first for s in samples):  # a scheduled poll: one meter
            self._note_meter(first, samples)
            return
        by_meter: dict[str, list[Sample]] = {}
        for sample in samples:
            by_meter.setdefault(sample.meter_id, []).append(sample)
        for meter_id, group in by_meter.items():
            self._note_meter(meter_id, group)

    def _note_meter(self, meter_id: str, group: Sequence[Sample]) -> None:
        limit = self._limits.get(meter_id)
        # check_sample judges only good power and energy samples; skip the others unasked.
        findings = [
            f
            for s in group
            if s.role in _JUDGED_ROLES and (f := check_sample(s, limit)) is not None
        ]
        if findings and meter_id not in self._implausible:
            self._implausible.add(meter_id)
            self._log.warning(
                "meter %s values are implausible (order records flag them): %s",
                meter_id,
                "; ".join(f.describe() for f in findings),
            )
        elif (
            not findings
            and meter_id in self._implausible
            and any(s.quality is Quality.GOOD for s in group)
        ):
            self._implausible.discard(meter_id)
            self._log.info("meter %s values are plausible again", meter_id)


def build_sources(config: AgentConfig, clock: Clock) -> list[Source]:
    """One source per connection; OPC UA is imported only when an OPC UA meter is configured
    (importing asyncua costs ~25 MB of RSS on a Raspberry Pi)."""
    from edge_agent.sources.modbus.adapter import build_modbus_sources  # noqa: PLC0415

    sources: list[Source] = list(build_modbus_sources(config, clock))
    if any(meter.protocol == "opcua" and meter.enabled for meter in config.meters):
        from edge_agent.sources.opcua.adapter import build_opcua_sources  # noqa: PLC0415

        sources.extend(build_opcua_sources(config, clock))
    return sources
