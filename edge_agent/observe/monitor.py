"""Watch the running agent: one snapshot a second, judged, logged on change, exported.

The monitor sees samples as the sources deliver them (last good reading and poll errors per
meter, poll latency) and asks the rest of the agent for its counters through
:class:`AgentProbes`. It never talks to a device or the broker itself. What it judges
(:func:`edge_agent.observe.health.judge`) goes to the logs (once when a problem starts, once
when it ends), the retained status message (as problems) and, when ``health.enabled``, the
HTTP endpoint; the metrics are exported with the official Prometheus client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.config.models import AgentConfig
from edge_agent.domain import Quality, Sample
from edge_agent.observe.health import Reason, Snapshot, judge
from edge_agent.store import OutboxStats

log = logging.getLogger(__name__)

# The broker's absence is logged after this long, or health.broker_unreachable_s if shorter (a
# reconnect that succeeds at once is not news).
BROKER_LOG_AFTER_S = 5.0
TICK_S = 1.0
OUTBOX_EVERY_S = 10.0
# Poll latencies from a fast TCP meter (ms) to a slow RTU bus or a timeout (s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class AgentProbes:
    """How the monitor reads the rest of the agent (no I/O except ``outbox_stats``)."""

    outbox_stats: Callable[[], Awaitable[OutboxStats]]
    broker_connected: Callable[[], bool]
    store_failing_since: Callable[[], float | None]  # monotonic seconds
    mes_blocked_since: Callable[[], float | None]  # monotonic seconds
    counters: Callable[[], Mapping[str, float]]
    mes_rejected: Callable[[], Mapping[str, int]]
    report_problem: Callable[[str, str | None], None]


class Monitor:
    def __init__(self, config: AgentConfig, probes: AgentProbes) -> None:
        self._config = config
        self._probes = probes
        self._started = time.monotonic()
        self._last_good: dict[str, float | None] = {m.id: None for m in config.meters if m.enabled}
        self._poll_errors: Counter[str] = Counter()
        self._reasons: dict[str, str] = {}
        self._broker_down_since: float | None = None
        self._broker_logged = False
        self._lag_s = 0.0
        self._outbox: OutboxStats | None = None
        self._outbox_at = 0.0
        self.snapshot: Snapshot | None = None
        self.reasons: tuple[Reason, ...] = ()
        self.registry = CollectorRegistry()
        self._latency = Histogram(
            "edge_agent_poll_latency_seconds",
            "Duration of one meter read (all its register blocks or nodes).",
            ["meter"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._latency_children: dict[str, Histogram] = {}
        self.registry.register(_SnapshotCollector(self))

    # -- fed by the sources -----------------------------------------------------------------

    def on_samples(self, samples: Sequence[Sample], latency_s: float | None = None) -> None:
        """A meter read delivered: good points keep the meter fresh; a read with a failed
        point counts one poll error for that meter."""
        if not samples:
            return
        now = time.monotonic()
        first = samples[0].meter_id
        if all(s.meter_id == first for s in samples):  # a scheduled poll: one meter
            groups: Mapping[str, Sequence[Sample]] = {first: samples}
        else:
            by_meter: dict[str, list[Sample]] = {}
            for sample in samples:
                by_meter.setdefault(sample.meter_id, []).append(sample)
            groups = by_meter
        for meter_id, group in groups.items():
            if any(s.quality is Quality.GOOD for s in group):
                self._last_good[meter_id] = now
            if any(s.quality is not Quality.GOOD for s in group):
                self._poll_errors[meter_id] += 1
            if latency_s is not None:
                self._latency_of(meter_id).observe(latency_s)

    def _latency_of(self, meter_id: str) -> Histogram:
        """The meter's latency histogram (``labels()`` looks it up under a lock: once)."""
        child = self._latency_children.get(meter_id)
        if child is None:
            child = self._latency_children[meter_id] = self._latency.labels(meter=meter_id)
        return child

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: a snapshot a second."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_S)
            self._lag_s = max(0.0, time.monotonic() - before - TICK_S)
            await self.tick()

    async def tick(self) -> None:
        now = time.monotonic()
        self._watch_broker(now)
        outbox = await self._outbox_stats(now)
        failing = self._probes.store_failing_since()
        blocked = self._probes.mes_blocked_since()
        snapshot = Snapshot(
            taken_ns=time.time_ns(),
            meter_good_age_s={
                meter_id: None if seen is None else now - seen
                for meter_id, seen in self._last_good.items()
            },
            uptime_s=now - self._started,
            broker_unreachable_s=(
                None if self._broker_down_since is None else now - self._broker_down_since
            ),
            store_failing_s=None if failing is None else now - failing,
            mes_blocked_s=None if blocked is None else now - blocked,
            outbox_depth=outbox.unsent_count if outbox else 0,
            outbox_oldest_age_s=(
                max(0.0, (time.time_ns() - outbox.oldest_unsent_ns) / 1e9)
                if outbox and outbox.oldest_unsent_ns is not None
                else None
            ),
            event_loop_lag_s=self._lag_s,
            counters=dict(self._probes.counters()),
        )
        reasons = judge(snapshot, self._config.health)
        self._announce(reasons)
        self.snapshot, self.reasons = snapshot, tuple(reasons)

    async def _outbox_stats(self, now: float) -> OutboxStats | None:
        """The outbox's depth and oldest record, queried every OUTBOX_EVERY_S (a scan of the
        outbox table: not once a second on a gateway's SD card). The oldest record's age is
        computed from it at every tick, so it stays exact."""
        if self._outbox is not None and now - self._outbox_at < OUTBOX_EVERY_S:
            return self._outbox
        try:
            self._outbox = await self._probes.outbox_stats()
        except Exception as exc:  # the store's own failure is judged as store_failing
            log.debug("outbox statistics failed: %r", exc)
            self._outbox = None
        self._outbox_at = now
        return self._outbox

    def _watch_broker(self, now: float) -> None:
        host = f"{self._config.mqtt.host}:{self._config.mqtt.port}"
        if self._probes.broker_connected():
            if self._broker_logged and self._broker_down_since is not None:
                log.info(
                    "MQTT broker %s reachable again after %.0f s",
                    host,
                    now - self._broker_down_since,
                )
            self._broker_down_since, self._broker_logged = None, False
            return
        if self._broker_down_since is None:
            self._broker_down_since = now
        log_after = min(BROKER_LOG_AFTER_S, self._config.health.broker_unreachable_s)
        if not self._broker_logged and now - self._broker_down_since >= log_after:
            log.warning(
                "MQTT broker %s unreachable for %.0f s; records wait in the outbox",
                host,
                now - self._broker_down_since,
            )
            self._broker_logged = True

    def _announce(self, reasons: Sequence[Reason]) -> None:
        """Log and report a problem when it starts and when it ends, not every second."""
        current: dict[str, str] = {}
        for reason in reasons:
            current[reason.code] = (
                f"{current[reason.code]}; {reason.detail}"
                if reason.code in current
                else reason.detail
            )
        for code, detail in current.items():
            # Once per problem, not per second (its detail counts the seconds): the retained
            # status is re-published on every change. The MES intake reports its own blocked
            # state.
            if code not in self._reasons:
                log.warning("unhealthy: %s", detail)
                if code != "mes_intake_stuck":
                    self._probes.report_problem(code, detail)
        for code in self._reasons.keys() - current.keys():
            log.info("healthy again: %s", code)
            if code != "mes_intake_stuck":
                self._probes.report_problem(code, None)
        self._reasons = current

    # -- read by the HTTP thread ------------------------------------------------------------

    def poll_errors(self) -> Mapping[str, int]:
        return dict(self._poll_errors)

    def mes_rejected(self) -> Mapping[str, int]:
        return dict(self._probes.mes_rejected())


class _SnapshotCollector(Collector):
    """Counters and gauges from the latest snapshot (read at scrape time, in the HTTP thread;
    the snapshot is replaced whole, never changed in place)."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        monitor = self._monitor
        snapshot = monitor.snapshot
        errors = CounterMetricFamily(
            "edge_agent_poll_errors", "Meter reads with a failed point.", labels=["meter"]
        )
        for meter_id, count in sorted(monitor.poll_errors().items()):
            errors.add_metric([meter_id], count)
        yield errors
        if snapshot is None:
            return
        counters = snapshot.counters
        for name, help_text in (
            ("samples_stored", "Raw samples written to the store."),
            ("samples_thinned", "Samples of 'other' points not stored (store.other_points)."),
            ("records_published", "Records acknowledged by the broker."),
            ("records_enqueued", "Order and lot records put in the outbox."),
        ):
            yield CounterMetricFamily(f"edge_agent_{name}", help_text, counters.get(name, 0.0))
        mes = CounterMetricFamily(
            "edge_agent_mes_events", "MES events by result and reason.", labels=["result", "reason"]
        )
        mes.add_metric(["accepted", ""], counters.get("mes_accepted", 0.0))
        for reason, count in sorted(monitor.mes_rejected().items()):
            mes.add_metric(["rejected", reason], count)
        yield mes
        yield GaugeMetricFamily(
            "edge_agent_outbox_depth", "Records not yet published.", snapshot.outbox_depth
        )
        yield GaugeMetricFamily(
            "edge_agent_outbox_oldest_age_seconds",
            "Age of the oldest unpublished record (0: none).",
            snapshot.outbox_oldest_age_s or 0.0,
        )
        yield GaugeMetricFamily(
            "edge_agent_event_loop_lag_seconds",
            "How late the event loop ran a 1 s timer.",
            snapshot.event_loop_lag_s,
        )
        yield GaugeMetricFamily(
            "edge_agent_broker_connected",
            "1 while the publisher is connected to the broker.",
            1.0 if snapshot.broker_unreachable_s is None else 0.0,
        )
        age = GaugeMetricFamily(
            "edge_agent_meter_last_good_age_seconds",
            "Seconds since the meter's last good reading (NaN: none since start).",
            labels=["meter"],
        )
        for meter_id, seconds in sorted(snapshot.meter_good_age_s.items()):
            age.add_metric([meter_id], float("nan") if seconds is None else seconds)
        yield age
        yield GaugeMetricFamily(
            "edge_agent_healthy", "1 when /healthz says ok.", 0.0 if monitor.reasons else 1.0
        )
