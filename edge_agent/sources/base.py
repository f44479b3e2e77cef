"""The one small interface every protocol adapter implements, and the registry of kinds.

A *source* owns one connection — a Modbus TCP host:port, a serial RTU bus, an OPC UA endpoint —
and every meter configured on it. Meters sharing a connection share one lock (pymodbus clients
are not safe for concurrent requests), meters on different connections never wait on each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from edge_agent.clock import Clock
from edge_agent.config.models import AgentConfig
from edge_agent.domain import Sample

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


def build_sources(config: AgentConfig, clock: Clock) -> list[Source]:
    """One source per connection; OPC UA is imported only when an OPC UA meter is configured
    (importing asyncua costs ~25 MB of RSS on a Raspberry Pi)."""
    from edge_agent.sources.modbus.adapter import build_modbus_sources  # noqa: PLC0415

    sources: list[Source] = list(build_modbus_sources(config, clock))
    if any(meter.protocol == "opcua" and meter.enabled for meter in config.meters):
        from edge_agent.sources.opcua.adapter import build_opcua_sources  # noqa: PLC0415

        sources.extend(build_opcua_sources(config, clock))
    return sources
