"""OPC UA source (asyncua): one session per endpoint, read or subscribe, secured, reconnecting.

Modes: ``read`` sends one batched Read for every node of the endpoint each interval;
``subscribe`` creates monitored items and emits the last value of every node on each interval
(a counter's value is held between data changes). A reading is stamped with the server's
SourceTimestamp when that is fresh, else with the time the value is known to be current (see
``mapping.reading_timestamp_ns``): exact for values that just changed, immune to a server clock
that is off, and never the same reading twice. After the server restarts or
the network drops, the session is rebuilt with backoff, node ids are resolved again (namespace
indexes may have moved) and subscriptions are re-created; a counter covers the outage itself.

Security: the server's certificate must be in ``trusted_server_certificates`` (a file or a
folder) unless ``trust_on_first_use`` is set; a policy the server does not offer, an untrusted
certificate and a rejected user are reported as such (quality ``security``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, Node, ua

from edge_agent.clock import Clock
from edge_agent.config import read_secret
from edge_agent.config.models import AgentConfig, OpcUaEndpoint, OpcUaMeter, OpcUaPoint
from edge_agent.domain import NS_PER_S, PointRole, Quality, Sample, ns_from_datetime
from edge_agent.errors import SourceError, SourceSecurityError, SourceUnavailable
from edge_agent.plausibility import PowerLimit, power_limits
from edge_agent.sources.base import PlausibilityWatch, SampleSink
from edge_agent.sources.opcua.mapping import NodeRef, parse_node, reading_timestamp_ns
from edge_agent.sources.opcua.security import (
    POLICIES,
    SECURITY_MODES,
    classify_session_error,
    first_certificate,
    load_trusted_certificates,
    select_endpoint,
    thumbprint,
    verify_server_certificate,
)
from edge_agent.tasks import raise_if_cancelling

__all__ = ["OpcUaEndpointSource", "build_opcua_sources", "probe_endpoint"]

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
_Key = tuple[str, str]  # (meter id, point name)


@dataclass(frozen=True, slots=True)
class _Point:
    meter_id: str
    name: str
    config: OpcUaPoint
    ref: NodeRef

    @property
    def key(self) -> _Key:
        return (self.meter_id, self.name)


def _source_ns(value: ua.DataValue) -> int | None:
    source = value.SourceTimestamp
    if not isinstance(source, datetime):
        return None
    # asyncua gives naive datetimes in UTC (an OPC UA DateTime is always UTC)
    return ns_from_datetime(source if source.tzinfo else source.replace(tzinfo=UTC))


class OpcUaEndpointSource:
    """Implements :class:`edge_agent.sources.base.Source` for one OPC UA endpoint."""

    def __init__(
        self,
        endpoint: OpcUaEndpoint,
        meters: Sequence[OpcUaMeter],
        clock: Clock,
        power_limits: Mapping[str, PowerLimit] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._plausibility = PlausibilityWatch(power_limits or {}, log)
        self._clock = clock
        self._meters = {meter.id: meter for meter in meters}
        self._points = [
            _Point(meter.id, name, point, parse_node(point.node))
            for meter in meters
            for name, point in meter.points.items()
        ]
        # Resolved at start-up (a missing variable is a configuration error, reported before
        # any task runs), not at every reconnect.
        self._password = (
            read_secret(endpoint, f"opcua_endpoints[{endpoint.id}]") if endpoint.username else None
        )
        self._client: Client | None = None
        self._session_lost = False
        self._nodes: dict[_Key, Node] = {}
        self._unresolved: dict[_Key, tuple[Quality, str]] = {}
        self._held: dict[_Key, ua.DataValue] = {}
        self._last_ts: dict[_Key, int] = {}
        self._lock = asyncio.Lock()
        self._subscribed_s = 0.0
        self._backoff_s = 0.0
        self._next_connect_s = 0.0
        self._last_error = ""
        self._available = True
        self._outage_started_ns: int | None = None
        self._outage_note: dict[_Key, str] = {}
        self.sessions = 0  # sessions opened; every one after the first is a reconnect
        self.reads = 0

    @property
    def key(self) -> str:
        return f"opcua:{self.endpoint.id}"

    @property
    def meter_ids(self) -> tuple[str, ...]:
        return tuple(self._meters)

    @property
    def reconnects(self) -> int:
        return max(0, self.sessions - 1)

    # -- Source interface -------------------------------------------------------------------

    async def run(self, sink: SampleSink) -> None:
        interval = self.endpoint.interval_s
        deadline = self._clock.monotonic_s()
        try:
            while True:
                await self._clock.sleep_until(deadline)
                samples = await self._tick()
                raise_if_cancelling()  # asyncua awaits replies through wait_for
                if samples:
                    sink(samples)
                deadline += interval
                now = self._clock.monotonic_s()
                if deadline <= now:  # late: skip missed ticks, never burst
                    deadline += ((now - deadline) // interval + 1) * interval
        finally:
            await self.close()

    async def read_now(self, meter_ids: Sequence[str]) -> list[Sample]:
        """One batched Read of the given meters' nodes, in either mode (read-on-event)."""
        wanted = set(meter_ids)
        points = [p for p in self._points if p.meter_id in wanted]
        async with self._lock:
            try:
                await self._ensure_session()
                samples = await self._read(points)
            except SourceError as exc:
                return self._failed(points, exc)
        self._plausibility.note(samples)
        return samples

    async def close(self) -> None:
        async with self._lock:
            await self._drop_session()

    # -- polling ----------------------------------------------------------------------------

    async def _tick(self) -> list[Sample]:
        async with self._lock:
            try:
                await self._ensure_session()
                if self.endpoint.mode == "subscribe":
                    samples = self._held_samples()
                else:
                    samples = await self._read(self._points)
            except SourceError as exc:
                return self._failed(self._points, exc)
        self._plausibility.note(samples)
        return samples

    async def _read(self, points: Sequence[_Point]) -> list[Sample]:
        assert self._client is not None
        readable = [p for p in points if p.key in self._nodes]
        values: list[ua.DataValue] = []
        if readable:
            try:
                async with asyncio.timeout(self.endpoint.timeout_s):
                    values = await self._client.read_attributes(
                        [self._nodes[p.key] for p in readable], ua.AttributeIds.Value
                    )
            except (TimeoutError, OSError, ConnectionError, ua.UaError) as exc:
                await self._drop_session()
                raise SourceUnavailable(f"read from {self.endpoint.url} failed: {exc!r}") from exc
            self.reads += 1
        now = self._clock.now_ns()
        fresh_ns = int(self.endpoint.interval_s * NS_PER_S)
        by_key = {p.key: v for p, v in zip(readable, values, strict=True)}
        out = []
        for point in points:
            value = by_key.get(point.key)
            if value is None:  # not resolved in this session
                quality, detail = self._unresolved[point.key]
                out.append(self._bad(point, quality, detail, now))
                continue
            sample = self._sample(point, value, now=now, asof=now, fresh_ns=fresh_ns)
            if sample is not None:
                out.append(sample)
        return out

    def _held_samples(self) -> list[Sample]:
        """The latest notified value of every node. A data change reaches us at most about one
        publishing interval after it happened, so a value with no newer notification is known
        to be current only up to ``now - 2 intervals``: it is stamped there when its own
        SourceTimestamp is older (a quiet counter keeps producing readings, none twice)."""
        now = self._clock.now_ns()
        lag_ns = int(2 * self.endpoint.interval_s * NS_PER_S)
        waiting = self._clock.monotonic_s() - self._subscribed_s < 2 * self.endpoint.interval_s
        out = []
        for point in self._points:
            value = self._held.get(point.key)
            if point.key in self._unresolved:
                quality, detail = self._unresolved[point.key]
                out.append(self._bad(point, quality, detail, now))
            elif value is None:
                if not waiting:  # the initial notification is due within a publishing interval
                    out.append(
                        self._bad(point, Quality.TIMEOUT, "no data-change notification yet", now)
                    )
            else:
                sample = self._sample(point, value, now=now, asof=now - lag_ns, fresh_ns=lag_ns)
                if sample is not None:
                    out.append(sample)
        return out

    def _sample(
        self, point: _Point, value: ua.DataValue, *, now: int, asof: int, fresh_ns: int
    ) -> Sample | None:
        status = value.StatusCode
        if status is not None and not status.is_good():
            name = status.name
            quality = (
                Quality.ILLEGAL_ADDRESS if name == "BadNodeIdUnknown" else Quality.DEVICE_ERROR
            )
            return self._bad(point, quality, f"{point.config.node}: {name}", now)
        raw = value.Value.Value if value.Value is not None else None
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            return self._bad(
                point, Quality.DECODE_ERROR, f"{point.config.node}: not a number ({raw!r})", now
            )
        ts = reading_timestamp_ns(
            _source_ns(value),
            now_ns=now,
            asof_ns=asof,
            fresh_ns=fresh_ns,
            last_emitted_ns=self._last_ts.get(point.key),
        )
        if ts is None:  # nothing new since the last reading of this point
            return None
        state: str | None = None
        if point.config.role is PointRole.STATE and point.config.states is not None:
            mapped = point.config.states.get(round(raw))
            if mapped is None:
                return self._bad(
                    point, Quality.DECODE_ERROR,
                    f"state code {raw} is not in the value map {sorted(point.config.states)}", now,
                )  # fmt: skip
            state = mapped.value
        self._last_ts[point.key] = ts
        return Sample(
            ts,
            point.meter_id,
            point.name,
            point.config.role,
            point.config.unit,
            float(raw) * point.config.scale + point.config.offset,
            state=state,
            # The first reading after an outage carries the outage: a counter's value covers the
            # energy of the gap, and whoever reads the store can see why the gap is there.
            detail=self._outage_note.pop(point.key, ""),
        )

    def _bad(self, point: _Point, quality: Quality, detail: str, now: int) -> Sample:
        return Sample(
            now,
            point.meter_id,
            point.name,
            point.config.role,
            point.config.unit,
            None,
            quality,
            detail=detail,
        )

    def _failed(self, points: Sequence[_Point], exc: SourceError) -> list[Sample]:
        quality = Quality.SECURITY if isinstance(exc, SourceSecurityError) else Quality.CONNECTION
        now = self._clock.now_ns()
        if self._outage_started_ns is None:
            self._outage_started_ns = now
        return [self._bad(p, quality, str(exc), now) for p in points]

    # -- session ----------------------------------------------------------------------------

    async def _ensure_session(self) -> None:
        if self._session_lost:  # asyncua's watchdog saw the connection die
            await self._drop_session()
        if self._client is not None:
            return
        now = self._clock.monotonic_s()
        if now < self._next_connect_s:
            raise SourceUnavailable(
                f"{self.endpoint.url} not connected ({self._last_error}); "
                f"next attempt in {self._next_connect_s - now:.1f} s"
            )
        try:
            await self._connect()
        except SourceError as exc:
            self._backoff_s = min(MAX_BACKOFF_S, max(0.5, self._backoff_s * 2))
            self._next_connect_s = now + self._backoff_s
            self._last_error = str(exc)
            if self._available:
                self._available = False
                log.warning("OPC UA endpoint %s unavailable: %s", self.endpoint.id, exc)
            raise
        self.sessions += 1
        if self._outage_started_ns is not None:
            outage_s = (self._clock.now_ns() - self._outage_started_ns) / NS_PER_S
            note = (
                f"first reading after an outage of {outage_s:.1f} s (reconnect {self.reconnects})"
            )
            self._outage_note = {p.key: note for p in self._points}
            self._outage_started_ns = None
            log.info(
                "OPC UA endpoint %s reconnected after %.1f s (%d reconnects so far)",
                self.endpoint.id, outage_s, self.reconnects,
            )  # fmt: skip
        self._available = True
        self._backoff_s = 0.0

    async def _connect(self) -> None:
        endpoint = self.endpoint
        # asyncua's own auto_reconnect would keep the old NodeIds across a server restart; the
        # agent rebuilds the whole session instead so nsu= ids and browse paths are re-resolved.
        client = Client(
            endpoint.url,
            timeout=endpoint.timeout_s,
            watchdog_intervall=max(1.0, endpoint.timeout_s),
        )
        client.application_uri = endpoint.application_uri
        self._session_lost = False

        async def lost(exc: Exception) -> None:
            if self._client is client:
                log.info("OPC UA endpoint %s: connection lost (%r)", endpoint.id, exc)
                self._session_lost = True

        client.connection_lost_callback = lost
        if endpoint.username:
            client.set_user(endpoint.username)
            if self._password is not None:
                client.set_password(self._password)
        if endpoint.security.policy != "None":
            await self._apply_security(client)
        try:
            async with asyncio.timeout(endpoint.timeout_s * 2):
                await client.connect()
        except Exception as exc:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await client.disconnect()
            raise classify_session_error(exc, endpoint.url, endpoint.username) from exc
        self._client = client
        try:
            await self._resolve(client)
            if endpoint.mode == "subscribe":
                await self._subscribe(client)
        except Exception as exc:
            await self._drop_session()
            if isinstance(exc, SourceError):
                raise
            raise SourceUnavailable(
                f"{endpoint.url}: setting up the session failed ({exc!r})"
            ) from exc

    async def _apply_security(self, client: Client) -> None:
        """Check the policy is offered and pin the server certificate BEFORE the session is
        created, so neither the user's password nor our signature goes to an unknown server."""
        security = self.endpoint.security
        probe = Client(self.endpoint.url, timeout=self.endpoint.timeout_s)
        try:
            async with asyncio.timeout(self.endpoint.timeout_s * 2):
                endpoints = await probe.connect_and_get_server_endpoints()
        except Exception as exc:
            raise SourceUnavailable(
                f"cannot list endpoints of {self.endpoint.url} ({exc!r})"
            ) from exc
        chosen = select_endpoint(endpoints, security.policy, security.mode)
        server_der = first_certificate(chosen.ServerCertificate)
        if security.trusted_server_certificates is not None:
            try:
                trusted = await asyncio.to_thread(
                    load_trusted_certificates, security.trusted_server_certificates
                )
            except OSError as exc:
                raise SourceSecurityError(
                    f"cannot read trusted_server_certificates ({exc.strerror}: {exc.filename})"
                ) from exc
            verify_server_certificate(server_der, trusted)
        else:  # trust_on_first_use, explicitly configured: say what was accepted
            log.warning(
                "OPC UA %s: trusting server certificate %s on first use",
                self.endpoint.id,
                thumbprint(server_der),
            )
        assert security.certificate is not None
        assert security.private_key is not None
        try:
            await client.set_security(
                POLICIES[security.policy],
                str(security.certificate),
                str(security.private_key),
                server_certificate=server_der,
                mode=SECURITY_MODES[security.mode],
            )
        except (OSError, ValueError) as exc:
            raise SourceSecurityError(
                f"cannot load the agent's certificate or key ({exc})"
            ) from exc

    async def _resolve(self, client: Client) -> None:
        """Node ids for this session: ``nsu=`` against the NamespaceArray read now (indexes may
        have moved since the last session), browse paths in one TranslateBrowsePaths call. A
        point that does not resolve fails alone (ILLEGAL_ADDRESS); the others are read."""
        namespaces = await client.get_namespace_array()
        nodes: dict[_Key, Node] = {}
        unresolved: dict[_Key, tuple[Quality, str]] = {}
        by_path = [p for p in self._points if p.ref.browse_path]
        for point in self._points:
            if not point.ref.browse_path:
                try:
                    nodes[point.key] = client.get_node(point.ref.node_id_string(namespaces))
                except LookupError as exc:
                    unresolved[point.key] = (Quality.ILLEGAL_ADDRESS, f"{point.config.node}: {exc}")
        if by_path:
            paths = [
                # "/Objects/..." starts below Root; "Root" itself is the starting node
                [part for part in p.ref.browse_path if part not in ("Root", "0:Root")]
                for p in by_path
            ]
            found = await client.nodes.root.get_children_by_path(
                paths, raise_on_partial_error=False
            )
            for point, targets in zip(by_path, found, strict=True):
                if targets:
                    nodes[point.key] = targets[0]
                else:
                    unresolved[point.key] = (
                        Quality.ILLEGAL_ADDRESS,
                        f"browse path {point.config.node!r} not found on the server",
                    )
        for key, (_, detail) in unresolved.items():
            log.warning("OPC UA %s %s.%s: %s", self.endpoint.id, key[0], key[1], detail)
        self._nodes = nodes
        self._unresolved = unresolved

    async def _subscribe(self, client: Client) -> None:
        self._held.clear()
        keys = {node.nodeid: key for key, node in self._nodes.items()}
        held = self._held

        class _Handler:
            def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
                key = keys.get(node.nodeid)
                if key is not None:
                    held[key] = data.monitored_item.Value

        period_ms = self.endpoint.interval_s * 1000
        subscription = await client.create_subscription(period_ms, _Handler())
        items = list(self._nodes.items())
        if not items:
            return
        results = await subscription.subscribe_data_change(
            [node for _, node in items], sampling_interval=period_ms / 2
        )
        for (key, _), result in zip(items, results, strict=True):
            if isinstance(result, ua.StatusCode):  # the server refused this monitored item
                quality = (
                    Quality.ILLEGAL_ADDRESS
                    if result.name == "BadNodeIdUnknown"
                    else Quality.DEVICE_ERROR
                )
                self._unresolved[key] = (quality, f"cannot monitor: {result.name}")
                del self._nodes[key]
        self._subscribed_s = self._clock.monotonic_s()

    async def _drop_session(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await client.disconnect()


def build_opcua_sources(config: AgentConfig, clock: Clock) -> list[OpcUaEndpointSource]:
    """One source (one session) per endpoint that has enabled meters."""
    endpoints = {endpoint.id: endpoint for endpoint in config.opcua_endpoints}
    groups: dict[str, list[OpcUaMeter]] = {}
    for meter in config.meters:
        if isinstance(meter, OpcUaMeter) and meter.enabled:
            groups.setdefault(meter.endpoint, []).append(meter)
    limits = power_limits(config)
    return [
        OpcUaEndpointSource(endpoints[eid], meters, clock, limits) for eid, meters in groups.items()
    ]


async def probe_endpoint(
    endpoint: OpcUaEndpoint, meters: Sequence[OpcUaMeter], clock: Clock
) -> list[Sample]:
    """Open a session, read every point of ``meters`` once, close (``edge-agent check
    --probe``). A security mismatch, an untrusted certificate or a rejected user comes back
    as samples of quality SECURITY whose ``detail`` says which, never as a generic failure."""
    source = OpcUaEndpointSource(endpoint, meters, clock)
    try:
        return await source.read_now(source.meter_ids)
    finally:
        await source.close()
