"""Composition root: build everything from the configuration, run it, stop it cleanly.

Start-up order matters: the store opens (and migrates) first, the engine resumes open orders,
the publisher starts draining unsent records, sources start polling, and only then does the MES
intake subscribe — so an event is never accepted before the agent can read meters and commit.
Shutdown runs the other way round and flushes buffered samples before the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Sequence
from pathlib import Path

from edge_agent.balances import BalanceKeeper
from edge_agent.batching import OtherPointThinning, SampleBatcher
from edge_agent.clock import Clock, SteadyClock
from edge_agent.clockwatch import ClockWatch
from edge_agent.config import AgentConfig, load_config
from edge_agent.config.preflight import preflight
from edge_agent.domain import NS_PER_S, Sample
from edge_agent.engine import OrderEngine
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.heap import release_free_heap
from edge_agent.mes.intake import MesIntake
from edge_agent.observe.http import HealthServer
from edge_agent.observe.monitor import AgentProbes, Monitor
from edge_agent.publish.drainer import OutboxPublisher
from edge_agent.runmarks import RunMarks
from edge_agent.service import ServiceNotifier
from edge_agent.sources.base import SampleSink, Source, build_sources
from edge_agent.store import Store, open_store
from edge_agent.tasks import stop_task

log = logging.getLogger(__name__)

_HOUSEKEEPING_INTERVAL_S = 60.0
EXIT_STARTUP = 2  # a start-up problem: one line each, no traceback
EXIT_TASK_FAILED = 1  # a background task died: the service manager restarts the agent
_STALE_CHECK_S = 5


class Agent:
    """The running agent. ``async with Agent(config) as agent: await agent.wait()``."""

    def __init__(
        self,
        config: AgentConfig,
        clock: Clock | None = None,
        notifier: ServiceNotifier | None = None,
    ) -> None:
        self.config = config
        self._notifier = notifier
        # Steps of the system clock are detected, not followed (edge_agent.clock).
        self.clock = clock or SteadyClock.system(
            check_sync=config.clock.check_sync, step_threshold_s=config.clock.step_threshold_s
        )
        self.sources: list[Source] = build_sources(config, self.clock)
        self._source_by_meter = {m: s for s in self.sources for m in s.meter_ids}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self.store: Store | None = None
        self.engine: OrderEngine | None = None
        self.balances: BalanceKeeper | None = None
        self.batcher: SampleBatcher | None = None
        other = config.store.other_points
        self.thinning = OtherPointThinning(other.every_s, other.on_change)
        self.publisher: OutboxPublisher | None = None
        self.intake: MesIntake | None = None
        self.clock_watch: ClockWatch | None = None
        self.run_marks: RunMarks | None = None
        self.monitor: Monitor | None = None
        self.health_server: HealthServer | None = None
        self.failed_task: str | None = None  # a background task died: exit non-zero

    async def __aenter__(self) -> Agent:
        await self.start_or_cleanup()
        return self

    async def start_or_cleanup(self) -> None:
        try:
            await self.start()
        except BaseException:
            # Half started (the broker link's thread, the heartbeat): stop what did start, or
            # the process stays alive doing nothing and the service manager never restarts it.
            await self.stop()
            raise

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        config = self.config
        self.store = store = await open_store(
            config.store.path, clock=self.clock, sample_merge_s=config.store.samples_merge_s
        )
        # Before resume: records of orders resumed now need the down-time that just ended.
        self.run_marks = RunMarks(store, self.clock)
        await self.run_marks.start()
        self._spawn(self.run_marks.run(), "heartbeat")
        self.batcher = SampleBatcher(
            store.write_samples,
            max_batch=config.store.batch_max_samples,
            max_delay_s=config.store.batch_max_delay_s,
            after_write=self._after_samples_written,
        )
        self.publisher = OutboxPublisher(config, store, clock=self.clock)
        if isinstance(self.clock, SteadyClock):  # before resume: its records need the journal
            self.clock_watch = ClockWatch(self.clock, store, self.publisher.report_problem)
            await self.clock_watch.load()
            self.clock_watch.report()
            self._spawn(self.clock_watch.run(), "clock-watch")
        self.engine = OrderEngine(
            config,
            store,
            self.clock,
            self.read_now,
            self.publisher.notify,
            unwritten_since=self.batcher.oldest_pending_ns,
            write_samples_soon=self.batcher.write_soon,
        )
        if config.balance.enabled:  # before resume: resumed orders may change balances
            self.balances = BalanceKeeper(
                config,
                store,
                self.clock,
                self.engine.timelines_overlapping,
                self.publisher.notify,
                shared_inputs=self.engine.shared_inputs,
            )
            self.engine.order_listener = self.balances.order_changed
            await self.balances.start()
        await self.engine.resume()
        self._spawn(self.engine.run_finaliser(), "finaliser")
        if self.balances is not None:
            self._spawn(self.balances.run(), "energy-balances")
        self.monitor = self._build_monitor()
        if config.health.enabled:  # before anything talks to the world: a taken port is fatal
            self.health_server = HealthServer(self.monitor, config.health.host, config.health.port)
            self.health_server.start()
        await self.publisher.start()
        self._spawn(self.batcher.run(), "sample-writer")
        for source in self.sources:
            self._spawn(source.run(self._sink_for(source)), f"source {source.key}")
        self._spawn(self._housekeeping(), "housekeeping")
        self.intake = MesIntake(
            config,
            self.engine,
            probe=store.probe_write,
            clock=self.clock,
            report_problem=self.publisher.report_problem,
        )
        await self.intake.start()
        self._spawn(self.monitor.run(), "monitor")
        if self._notifier is not None and self._notifier.watchdog_s is not None:
            self._spawn(self._feed_watchdog(self._notifier.watchdog_s), "watchdog")
        log.info(
            "edge-agent running: site %s, %d meters on %d connections, %d equipment",
            config.site.id,
            len(config.meters),
            len(self.sources),
            len(config.equipment),
        )

    async def _feed_watchdog(self, timeout_s: float) -> None:
        """Ping systemd's watchdog while the event loop runs and every task of the agent is
        alive — not tied to the broker or the meters: a restart cannot bring those back and
        would only add a gap."""
        assert self._notifier is not None
        me = asyncio.current_task()
        while True:
            if all(not task.done() for task in self._tasks if task is not me):
                self._notifier.watchdog()
            await asyncio.sleep(timeout_s / 3)

    def _build_monitor(self) -> Monitor:
        store, batcher, publisher = self.store, self.batcher, self.publisher
        thinning = self.thinning
        assert store is not None
        assert batcher is not None
        assert publisher is not None

        def counters() -> dict[str, float]:
            intake = self.intake
            return {
                "samples_stored": batcher.written,
                "samples_thinned": thinning.thinned,
                "records_published": publisher.published,
                "records_enqueued": self.engine.records_enqueued if self.engine else 0,
                "mes_accepted": intake.accepted if intake else 0,
            }

        probes = AgentProbes(
            outbox_stats=store.outbox_stats,
            broker_connected=publisher.link.connected.is_set,
            store_failing_since=lambda: batcher.failing_since,
            mes_blocked_since=lambda: self.intake.blocked_since if self.intake else None,
            counters=counters,
            mes_rejected=lambda: dict(self.intake.rejected) if self.intake else {},
            report_problem=publisher.report_problem,
        )
        return Monitor(self.config, probes)

    def _sink_for(self, source: Source) -> SampleSink:
        """The batcher, and the monitor (fresh meters, poll errors, the read's latency)."""
        batcher, monitor = self.batcher, self.monitor
        assert batcher is not None
        assert monitor is not None

        keep = self.thinning.keep

        def sink(samples: Sequence[Sample]) -> None:
            batcher.put(keep(samples))
            stats = getattr(source, "stats", None)  # Modbus connections time each read
            monitor.on_samples(samples, getattr(stats, "last_latency_s", None))

        return sink

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # A background task must never die silently: stop the agent so systemd restarts it.
            log.error("task %s failed: %r; stopping", task.get_name(), error, exc_info=error)
            self.failed_task = task.get_name()
            self._stopped.set()

    async def read_now(self, meter_ids: Sequence[str]) -> list[Sample]:
        """Read the given meters at once (read-on-event), one request batch per connection."""
        by_source: dict[str, list[str]] = {}
        for meter_id in meter_ids:
            source = self._source_by_meter.get(meter_id)
            if source is not None:
                by_source.setdefault(source.key, []).append(meter_id)
        sources = {source.key: source for source in self.sources}
        results = await asyncio.gather(
            *(sources[key].read_now(ids) for key, ids in by_source.items())
        )
        return [sample for batch in results for sample in batch]

    async def _after_samples_written(self, _: Sequence[Sample]) -> None:
        if self.engine is not None and any(self.engine.pending):
            self.engine.request_finalise()

    async def _housekeeping(self) -> None:
        """Order timeouts, stale orders, sample retention and the disk budget."""
        assert self.store is not None
        assert self.engine is not None
        retention_ns = int(self.config.store.retention_days * 86400 * NS_PER_S)
        budget_bytes = int(self.config.store.outbox_budget_mb * 1024 * 1024)
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            if any(self.engine.pending):
                self.engine.request_finalise()  # orders whose timeout passed
            if tick % _STALE_CHECK_S == 0:
                await self.engine.close_stale()  # orders open past max_order_duration_s
            if tick % int(_HOUSEKEEPING_INTERVAL_S) == 0:
                pruned = await self.store.prune_samples(self.clock.now_ns() - retention_ns)
                if pruned:
                    log.info(
                        "pruned %d samples older than %g days",
                        pruned,
                        self.config.store.retention_days,
                    )
                started_s = self.clock.monotonic_s()
                if deleted := await self.store.enforce_budget(budget_bytes):
                    log.info(
                        "deleted the %d oldest samples in %.1f s to keep the database under its "
                        "budget of %g MiB (store.outbox_budget_mb)",
                        deleted,
                        self.clock.monotonic_s() - started_s,
                        self.config.store.outbox_budget_mb,
                    )
                    # The pruning's burst of SQLite work leaves free memory in its thread's
                    # C heap; without this the process keeps it (the soak's RSS step).
                    release_free_heap()

    async def wait(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        """Stop whatever started, in order; also after a start that failed half-way (each step
        is tried, a failing one logged, so the store is always closed)."""
        if self.intake is not None:
            await self._stop_step("MES intake", self.intake.stop())
        await asyncio.gather(*(stop_task(task) for task in self._tasks))
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.close()
        if self.health_server is not None:
            await self._stop_step("health endpoint", asyncio.to_thread(self.health_server.stop))
        if self.batcher is not None:
            await self._stop_step("sample writer", self.batcher.flush())
        if self.engine is not None:
            await self._stop_step("finaliser", self.engine.finalise_ready())
        if self.publisher is not None and self.publisher.started:
            await self._stop_step("publisher", self.publisher.stop())
        if self.clock_watch is not None:
            await self._stop_step("clock journal", self.clock_watch.save())
        if self.run_marks is not None:
            await self._stop_step("run marks", self.run_marks.stop())
        if self.store is not None:
            await self._stop_step("store", self.store.close())
        log.info("edge-agent stopped")

    @staticmethod
    async def _stop_step(what: str, step: Awaitable[None]) -> None:
        try:
            await step
        except Exception as exc:  # the next steps must still run
            log.warning("stopping: %s failed: %r", what, exc)


async def run_agent(config: AgentConfig, config_path: Path | None = None) -> int:
    """`edge-agent run`: until SIGTERM or SIGINT. SIGHUP reloads ``config_path``: a new
    configuration that fails its checks is rejected with its problems and the running one
    stays; a good one replaces it (the agent restarts in-process: a gap of well under a second,
    recorded as down-time like any restart)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    reloaded: list[AgentConfig] = []
    notifier = ServiceNotifier()
    agent = Agent(config, notifier=notifier)

    def request_stop() -> None:
        stopping.set()
        agent.request_stop()

    def request_reload() -> None:
        new = _reload(config_path)
        if new is not None:
            reloaded[:] = [new]
            notifier.reloading()
            agent.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    loop.add_signal_handler(signal.SIGHUP, request_reload)
    previous: AgentConfig | None = None
    while True:
        try:
            await agent.start_or_cleanup()
        except (EdgeAgentError, OSError) as exc:
            end_startup_gc_pause()
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            if previous is None:
                print(f"edge-agent could not start: {len(problems)} problem(s)", file=sys.stderr)
                for problem in problems:
                    print(f"  {problem}", file=sys.stderr)
                return EXIT_STARTUP
            log.error(
                "the reloaded configuration did not start: %s; back to the previous one",
                "; ".join(problems),
            )
            agent, previous = Agent(previous, notifier=notifier), None
            continue
        end_startup_gc_pause()
        notifier.ready(f"running: site {agent.config.site.id}, {len(agent.config.meters)} meters")
        try:
            await agent.wait()
        finally:
            if stopping.is_set() or not reloaded or agent.failed_task is not None:
                notifier.stopping()
            await agent.stop()
        if agent.failed_task is not None:
            log.error("exiting with status %d: task %s failed", EXIT_TASK_FAILED, agent.failed_task)
            return EXIT_TASK_FAILED
        if stopping.is_set() or not reloaded:
            return 0
        previous, agent = agent.config, Agent(reloaded.pop(), notifier=notifier)
        log.info("configuration reloaded from %s", config_path)


def end_startup_gc_pause() -> None:
    """`edge-agent run` starts with the cyclic garbage collector off: reading the configuration
    and building one object graph per meter allocates hundreds of thousands of objects, which
    the collector traversed again and again (0.2-0.3 s of a 1,000-meter start). They live as
    long as the process, so they are frozen out of later collections, then it is turned on."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _reload(config_path: Path | None) -> AgentConfig | None:
    """The configuration file read again and checked; None (logged) when it cannot be used."""
    if config_path is None:
        log.warning("SIGHUP: no configuration file to reload")
        return None
    try:
        new = load_config(config_path)
        problems = preflight(new)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        log.error(
            "configuration reload rejected, the running configuration stays: %s: %d problem(s)",
            config_path,
            len(exc.problems),
        )
        for problem in exc.problems:
            log.error("  %s", problem)
        return None
    return new
