"""An MES that runs a production plan: lots through process steps, order events over MQTT.

For every order it switches the simulated machine to ``running`` and publishes ``start`` with
that very instant as ``ts`` (and the reverse for ``stop``), so the ground truth of an order is
exactly the machine's energy between its events. Events follow DESIGN §5. Timestamps carry
microseconds (what RFC 3339 text keeps), so the state change is set at the microsecond too:
the instant the agent reads from ``ts`` is the instant the power changed.

    python -m simulators.mes --host 127.0.0.1 --port 1883 --topic acme/osaka-plant/mes/orders
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.clock import Clock, SystemClock
from edge_agent.domain import NS_PER_S
from simulators.machines import PROFILES, SimulatedMachine
from simulators.plant import ENCLOSURE_LINE, Step

# A Japanese MES stamps local time: a non-UTC offset also checks the agent's conversion.
JST = timezone(timedelta(hours=9), "JST")
QUANTITY_UNIT = "piece"


def rfc3339(ts_ns: int, utc_offset: timezone = JST) -> str:
    """RFC 3339 with microseconds and the MES's own UTC offset (default +09:00)."""
    seconds, rest = divmod(ts_ns, NS_PER_S)
    moment = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=rest // 1000)
    return moment.astimezone(utc_offset).isoformat(timespec="microseconds")


def truncate_us(ts_ns: int) -> int:
    return ts_ns - ts_ns % 1000


@dataclass(frozen=True, slots=True)
class LotPlan:
    lot_id: str
    product_id: str
    quantity: int
    scrap: int = 0


@dataclass
class TrueOrder:
    """What really happened for one order, to compare the agent's record with."""

    order_id: str
    lot_id: str
    equipment_id: str
    meter_id: str
    start_ns: int
    stop_ns: int = 0
    occupied: list[tuple[int, int]] = field(default_factory=list)  # running intervals
    quantity_good: int = 0
    true_kwh: float = 0.0  # the machine's exact energy over the occupied intervals
    product_id: str = ""
    quantity_scrap: int = 0
    pauses: list[tuple[int, int]] = field(default_factory=list)  # (pause ts, resume ts)


class EventSink(Protocol):
    async def publish(self, event: dict[str, Any]) -> None:
        """Deliver one event; return once the broker (or whatever stands for it) has it."""
        ...


class MesPublisher:
    """paho client publishing QoS 1 and waiting for each PUBACK (``on_publish``)."""

    def __init__(self, host: str, port: int, topic: str, client_id: str | None = None) -> None:
        self.topic = topic
        self.published: list[dict[str, Any]] = []
        # paho calls back from its network thread; a PUBACK can arrive before we registered
        # a waiter for the mid publish() returned, so early acks are remembered under a lock.
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        self._early_acks: set[int] = set()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"mes-sim-{uuid.uuid4().hex[:8]}",
        )
        self._client.on_publish = self._on_publish
        self._client.on_disconnect = self._on_disconnect
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, _reason: Any, _properties: Any
    ) -> None:
        with self._lock:
            waiter = self._pending.pop(mid, None)
            if waiter is None:
                self._early_acks.add(mid)
                return
        loop, future = waiter
        loop.call_soon_threadsafe(_resolve, future, None)

    def _on_disconnect(self, _client: paho.Client, *_args: Any) -> None:
        with self._lock:
            waiters, self._pending = list(self._pending.values()), {}
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future, ConnectionError("broker connection lost"))

    async def publish(self, event: dict[str, Any]) -> None:
        await self.publish_raw(json.dumps(event).encode())
        self.published.append(event)

    async def publish_raw(self, payload: bytes, timeout_s: float = 60.0) -> None:
        """QoS 1 until the broker acknowledged it, re-sent across a broker outage (the same
        ``event_id`` makes a duplicate harmless), as an MES outbox would do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if not self._client.is_connected():
                await asyncio.sleep(0.05)  # paho reconnects on its own thread
                continue
            future: asyncio.Future[None] = loop.create_future()
            # Not under our lock: paho runs on_publish holding its own message mutex.
            info = self._client.publish(self.topic, payload, qos=1)
            with self._lock:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                    return
                self._pending[info.mid] = (loop, future)
            try:
                await asyncio.wait_for(future, max(deadline - loop.time(), 0.0))
                return
            except ConnectionError:
                continue
            except TimeoutError:
                break
        raise TimeoutError(f"event not acknowledged by the broker in {timeout_s} s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def event(
    kind: str, ts_ns: int, lot: LotPlan, *, utc_offset: timezone = JST, **fields: Any
) -> dict[str, Any]:
    """One §5 event; fields given as None are left out."""
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "ts": rfc3339(ts_ns, utc_offset),
        "lot_id": lot.lot_id,
    }
    body.update({key: value for key, value in fields.items() if value is not None})
    return body


async def _wait(clock: Clock, seconds: float) -> None:
    # Through the clock: a FakeClock makes a whole plan run instantly in unit tests.
    await clock.sleep_until(clock.monotonic_s() + seconds)


async def run_order(
    machine: SimulatedMachine,
    publisher: EventSink,
    clock: Clock,
    lot: LotPlan,
    step: Step,
    duration_s: float,
    *,
    pause_s: float = 0.0,
    utc_offset: timezone = JST,
) -> TrueOrder:
    """One order: start (machine running), optionally pause/resume halfway, stop (idle)."""
    order_id = f"{lot.lot_id}-{step.equipment_id}"
    common: dict[str, Any] = {
        "order_id": order_id,
        "equipment_id": step.equipment_id,
        "utc_offset": utc_offset,
    }
    start = machine.set_state("running", truncate_us(clock.now_ns()))
    truth = TrueOrder(
        order_id, lot.lot_id, step.equipment_id, step.meter_id, start, product_id=lot.product_id
    )
    await publisher.publish(
        event("start", start, lot, product_id=lot.product_id, unit=QUANTITY_UNIT, **common)
    )
    running_since = start
    if pause_s > 0:
        await _wait(clock, duration_s / 2)
        paused = machine.set_state("idle", truncate_us(clock.now_ns()))
        truth.occupied.append((running_since, paused))
        await publisher.publish(event("pause", paused, lot, **common))
        await _wait(clock, pause_s)
        running_since = machine.set_state("running", truncate_us(clock.now_ns()))
        truth.pauses.append((paused, running_since))
        await publisher.publish(event("resume", running_since, lot, **common))
        await _wait(clock, duration_s / 2)
    else:
        await _wait(clock, duration_s)
    stop = machine.set_state("idle", truncate_us(clock.now_ns()))
    truth.occupied.append((running_since, stop))
    truth.stop_ns = stop
    truth.quantity_good = lot.quantity - lot.scrap
    truth.quantity_scrap = lot.scrap
    truth.true_kwh = sum(
        machine.energy_kwh_at(b) - machine.energy_kwh_at(a) for a, b in truth.occupied
    )
    await publisher.publish(
        event(
            "stop",
            stop,
            lot,
            quantity_good=truth.quantity_good,
            quantity_scrap=lot.scrap,
            unit=QUANTITY_UNIT,
            **common,
        )
    )
    return truth


async def run_lot(
    machines: dict[str, SimulatedMachine],
    publisher: EventSink,
    clock: Clock,
    lot: LotPlan,
    steps: Sequence[Step],
    step_s: float,
    *,
    gap_s: float = 0.3,
    pause_on: str | None = None,
    utc_offset: timezone = JST,
    equipment_locks: dict[str, asyncio.Lock] | None = None,
) -> list[TrueOrder]:
    """A lot through every step in order, then ``lot_complete``. With ``equipment_locks`` a
    step waits until the previous lot has left that equipment (one order per machine)."""
    orders = []
    for step in steps:
        pause = step_s / 2 if step.equipment_id == pause_on else 0.0
        lock = equipment_locks[step.equipment_id] if equipment_locks else None
        if lock is not None:
            await lock.acquire()
        try:
            order = await run_order(
                machines[step.meter_id],
                publisher,
                clock,
                lot,
                step,
                step_s,
                pause_s=pause,
                utc_offset=utc_offset,
            )
        finally:
            if lock is not None:
                lock.release()
        orders.append(order)
        await _wait(clock, gap_s)
    await publisher.publish(
        event(
            "lot_complete",
            truncate_us(clock.now_ns()),
            lot,
            quantity_good=lot.quantity - lot.scrap,
            unit=QUANTITY_UNIT,
            utc_offset=utc_offset,
        )
    )
    return orders


async def run_plan(
    machines: dict[str, SimulatedMachine],
    publisher: EventSink,
    lots: Sequence[LotPlan],
    *,
    steps: Sequence[Step] = ENCLOSURE_LINE,
    step_s: float = 3.0,
    gap_s: float = 0.3,
    clock: Clock | None = None,
    pause_on: str | None = None,
    concurrent: bool = True,
    utc_offset: timezone = JST,
) -> list[TrueOrder]:
    """Run every lot through ``steps``; returns the true orders, lot by lot in step order.

    ``concurrent``: lots flow one behind the other (lot 2 cuts while lot 1 bends), never two
    orders on one machine at once. Otherwise a lot starts when the previous one completed.
    ``machines`` maps meter id to the machine that meter measures."""
    clock = clock or SystemClock()
    locks = {step.equipment_id: asyncio.Lock() for step in steps}

    def lot_run(lot: LotPlan) -> Awaitable[list[TrueOrder]]:
        return run_lot(
            machines,
            publisher,
            clock,
            lot,
            steps,
            step_s,
            gap_s=gap_s,
            pause_on=pause_on,
            utc_offset=utc_offset,
            equipment_locks=locks,
        )

    if not concurrent:
        sequential: list[TrueOrder] = []
        for lot in lots:
            sequential += await lot_run(lot)
        return sequential
    # Lot k+1 enters the line one step-time after lot k (a pause makes a step longer).
    stagger = step_s * (1.5 if pause_on else 1.0) + gap_s

    async def delayed(index: int, lot: LotPlan) -> list[TrueOrder]:
        await _wait(clock, index * stagger)
        return await lot_run(lot)

    results = await asyncio.gather(*(delayed(i, lot) for i, lot in enumerate(lots)))
    return [order for lot_orders in results for order in lot_orders]


def demo_lots(count: int, *, prefix: str = "LOT") -> list[LotPlan]:
    return [
        LotPlan(f"{prefix}-{index + 1:04d}", "ENCL-400x300", quantity=20, scrap=index % 2)
        for index in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    """Publish a plan's events against a broker, driving machines of its own (their ground
    truth is printed): for a real agent, run the meters with the same timing separately."""
    parser = argparse.ArgumentParser(description="Publish MES order events for a production plan")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic", default="acme/osaka-plant/mes/orders")
    parser.add_argument("--lots", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--gap-seconds", type=float, default=0.3)
    parser.add_argument("--pause-on", default=None, help="equipment id whose orders pause once")
    parser.add_argument("--sequential", action="store_true", help="one lot at a time")
    parser.add_argument("--utc-offset-hours", type=float, default=9.0)
    args = parser.parse_args(argv)
    offset = timezone(timedelta(hours=args.utc_offset_hours))

    async def go() -> None:
        clock = SystemClock()
        machines = {
            step.meter_id: SimulatedMachine(PROFILES[step.machine_type], clock)
            for step in ENCLOSURE_LINE
        }
        publisher = MesPublisher(args.host, args.port, args.topic)
        try:
            orders = await run_plan(
                machines,
                publisher,
                demo_lots(args.lots),
                step_s=args.step_seconds,
                gap_s=args.gap_seconds,
                pause_on=args.pause_on,
                concurrent=not args.sequential,
                utc_offset=offset,
                clock=clock,
            )
        finally:
            publisher.close()
        for order in orders:
            print(f"{order.order_id}: {order.true_kwh:.5f} kWh (simulated machine)")
        print(f"{len(publisher.published)} events published to {args.topic}", flush=True)

    try:
        asyncio.run(go())
    except (OSError, TimeoutError) as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
