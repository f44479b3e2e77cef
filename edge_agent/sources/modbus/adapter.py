"""Modbus TCP / RTU polling with pymodbus (imperative shell around the pure plan and decode).

One :class:`ModbusConnection` per TCP host:port or serial port. pymodbus clients are not safe for
concurrent requests on one connection, so each connection has one lock and one polling task;
meters on it are polled on their own intervals, scheduled by deadline. Connections never wait for
each other, so a dead meter only costs the meters sharing its wire (a gateway or an RS-485 bus),
and there it is backed off exponentially so it cannot starve them (Telegraf #11782: one dead RTU
slave discarding every slave's data).

Failures become samples, never exceptions:

    no answer within timeout_s ............ TIMEOUT (after ``retries`` more attempts)
    refused, reset, closed, unreachable ... CONNECTION (reconnect with capped backoff)
    Modbus exception 2 .................... ILLEGAL_ADDRESS
    other exception codes (1, 3, 4, 6, 0x0A, 0x0B) and garbled / out-of-sequence replies
                                            DEVICE_ERROR (garbage also forces a reconnect)
    NaN / inf / state code not in the map . DECODE_ERROR
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from edge_agent.clock import Clock
from edge_agent.config.models import AgentConfig, ModbusPoint, ModbusRtuMeter, ModbusTcpMeter
from edge_agent.domain import PointRole, Quality, Sample
from edge_agent.errors import DecodeError
from edge_agent.plausibility import PowerLimit, power_limits
from edge_agent.sources.base import PlausibilityWatch, SampleSink
from edge_agent.sources.modbus.decode import decode_bits, decode_registers
from edge_agent.sources.modbus.plan import ReadBlock, extract, plan_reads
from edge_agent.tasks import raise_if_cancelling

__all__ = [
    "MAX_BACKOFF_S",
    "ConnectionStats",
    "ModbusConnection",
    "ModbusMeter",
    "RawPointRead",
    "build_modbus_sources",
    "connection_key",
]

log = logging.getLogger(__name__)

ModbusMeter = ModbusTcpMeter | ModbusRtuMeter
_Client = AsyncModbusTcpClient | AsyncModbusSerialClient

MAX_BACKOFF_S = 30.0
# Connections whose first polls start together (build_modbus_sources): up to this many per
# group, in at most _MAX_START_GROUPS groups over the first interval.
_CONNECTIONS_PER_START_GROUP = 100
_MAX_START_GROUPS = 10
MIN_CONNECT_BACKOFF_S = 0.5
# Modbus exception codes (Modbus Application Protocol Specification V1.1b3, §7), worded for the
# person who has to fix it: the likely cause, not just the code's name.
_EXCEPTION_TEXT = {
    1: "illegal function (the meter does not support this register type)",
    2: "illegal data address (no such register on this meter)",
    3: "illegal data value (register count not accepted)",
    4: "device failure (or no such unit id on this server: check unit_id)",
    5: "acknowledge (long operation in progress)",
    6: "device busy",
    10: "gateway path unavailable (gateway misconfigured or overloaded)",
    11: "gateway target failed to respond (wrong unit id, or the meter behind the gateway is off)",
}


class _BlockFailed(Exception):
    """One request failed; carries the sample quality and the human-readable reason."""

    def __init__(self, quality: Quality, detail: str, *, reconnect: bool = False) -> None:
        super().__init__(detail)
        self.quality = quality
        self.detail = detail
        self.reconnect = reconnect


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one connection since it was built (``ModbusConnection.stats`` hands out a
    copy, so a snapshot does not move while it is read).

    ``polls`` counts meter reads (scheduled and ``read_now``), ``failures`` the reads in which no
    point answered, ``skipped_ticks`` the scheduled ticks dropped because the connection was
    late by more than an interval or the meter was backed off, ``reconnects`` the successful
    (re)connections, ``last_latency_s`` the duration of the last meter read.
    """

    polls: int = 0
    failures: int = 0
    skipped_ticks: int = 0
    reconnects: int = 0
    last_latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RawPointRead:
    """One point as ``read_now_raw`` saw it: the sample and the register words (in address
    order, as read) it was decoded from; ``words`` is None when the read failed, and holds 0/1
    for coils and discrete inputs."""

    sample: Sample
    point: ModbusPoint
    words: tuple[int, ...] | None


@dataclass(slots=True)
class _MeterState:
    meter: ModbusMeter
    blocks: list[ReadBlock]
    decoders: list[_BlockDecoder]
    next_deadline_s: float = 0.0
    failures: int = 0  # consecutive reads in which no point answered
    retry_at_s: float = 0.0  # backoff: no scheduled poll before this monotonic instant
    available: bool = True
    skipped: int = 0
    partial_warned: bool = False


class ModbusConnection:
    """Implements :class:`edge_agent.sources.base.Source` for one Modbus connection."""

    def __init__(
        self,
        key: str,
        meters: Sequence[ModbusMeter],
        clock: Clock,
        power_limits: Mapping[str, PowerLimit] | None = None,
        first_poll_after_s: float = 0.0,
    ) -> None:
        if not meters:
            raise ValueError("a connection needs at least one meter")
        self._key = key
        self._clock = clock
        self._first_poll_after_s = first_poll_after_s
        self._meters: dict[str, _MeterState] = {}
        for meter in meters:
            blocks = plan_reads(meter.points, meter.max_gap_registers, meter.max_registers_per_read)
            decoders = [_BlockDecoder(meter, block) for block in blocks]
            self._meters[meter.id] = _MeterState(meter, blocks, decoders)
        self._lock = asyncio.Lock()
        self._client: _Client | None = None
        self._connect_backoff_s = 0.0
        self._next_connect_s = 0.0
        self._connect_timeout_s = max(meter.timeout_s for meter in meters)
        self._rx_during_request = False
        self._counters = ConnectionStats()
        self._plausibility = PlausibilityWatch(power_limits or {}, log)

    @property
    def key(self) -> str:
        return self._key

    @property
    def meter_ids(self) -> tuple[str, ...]:
        return tuple(self._meters)

    @property
    def first_poll_after_s(self) -> float:
        """How long after ``run`` starts its meters are first polled (see build_modbus_sources)."""
        return self._first_poll_after_s

    @property
    def stats(self) -> ConnectionStats:
        # Read after every poll (the monitor's latency): built directly, dataclasses.replace
        # costs several times more.
        c = self._counters
        return ConnectionStats(c.polls, c.failures, c.skipped_ticks, c.reconnects, c.last_latency_s)

    def meter_available(self, meter_id: str) -> bool:
        """False from the read in which a meter stopped answering until one in which it answers."""
        return self._meters[meter_id].available

    # -- Source interface -------------------------------------------------------------------

    async def run(self, sink: SampleSink) -> None:
        start = self._clock.monotonic_s() + self._first_poll_after_s
        for state in self._meters.values():
            state.next_deadline_s = start
        try:
            while True:
                state = min(self._meters.values(), key=_due_s)
                await self._clock.sleep_until(_due_s(state))
                self._advance_deadline(state, self._clock.monotonic_s())
                async with self._lock:
                    samples = await self._read_meter(state, force_connect=False)
                raise_if_cancelling()  # pymodbus awaits replies through wait_for
                sink(samples)
        finally:
            await self.close()

    async def read_now(self, meter_ids: Sequence[str]) -> list[Sample]:
        states = [self._meters[m] for m in meter_ids if m in self._meters]
        # Read-on-event measures an order boundary: try to connect even inside the backoff.
        return await self._read_meters(states, force_connect=True)

    async def read_now_raw(self, meter_ids: Sequence[str]) -> list[RawPointRead]:
        """As :meth:`read_now`, with each point's register words (``check --probe``)."""
        states = [self._meters[m] for m in meter_ids if m in self._meters]
        words: dict[tuple[str, str], tuple[int, ...]] = {}
        samples = await self._read_meters(states, force_connect=True, words_out=words)
        return [
            RawPointRead(
                s,
                self._meters[s.meter_id].meter.points[s.point],
                words.get((s.meter_id, s.point)),
            )
            for s in samples
        ]

    async def close(self) -> None:
        async with self._lock:
            self._drop_client()

    # -- scheduling -------------------------------------------------------------------------

    def _advance_deadline(self, state: _MeterState, now_s: float) -> None:
        """Deadline scheduling: the next tick is the previous deadline plus the interval, never
        "now + interval", so polling does not drift. Ticks missed while a slow read or a backoff
        ran are skipped and counted, not fired in a burst."""
        interval = state.meter.interval_s
        state.next_deadline_s += interval
        if state.next_deadline_s <= now_s:
            missed = int((now_s - state.next_deadline_s) // interval) + 1
            state.next_deadline_s += missed * interval
            state.skipped += missed
            self._counters.skipped_ticks += missed

    # -- reading ----------------------------------------------------------------------------

    async def _read_meters(
        self,
        states: Sequence[_MeterState],
        *,
        force_connect: bool,
        words_out: dict[tuple[str, str], tuple[int, ...]] | None = None,
    ) -> list[Sample]:
        samples: list[Sample] = []
        async with self._lock:
            for state in states:
                samples += await self._read_meter(
                    state, force_connect=force_connect, words_out=words_out
                )
        return samples

    async def _read_meter(
        self,
        state: _MeterState,
        *,
        force_connect: bool,
        words_out: dict[tuple[str, str], tuple[int, ...]] | None = None,
    ) -> list[Sample]:
        meter = state.meter
        started = self._clock.monotonic_s()
        self._counters.polls += 1
        try:
            client = await self._ensure_client(force=force_connect)
        except _BlockFailed as failure:
            self._note_failure(state, failure.detail)
            return self._failed_samples(meter, list(meter.points), failure)
        # The client's response timeout is per connection in pymodbus; meters on one wire may
        # differ (a slow gateway target), and we hold the lock, so set it for this meter.
        client.comm_params.timeout_connect = meter.timeout_s
        # A meter already known to be dead gets one attempt: retries would only hold the bus.
        attempts = meter.retries + 1 if state.available else 1
        samples: list[Sample] = []
        for index, block in enumerate(state.blocks):
            decoder = state.decoders[index]
            try:
                values = await self._read_block(client, meter, block, decoder, attempts)
            except _BlockFailed as failure:
                if failure.reconnect:
                    self._drop_client()
                if failure.reconnect or failure.quality is Quality.TIMEOUT:
                    # The meter (or the link) is not answering: its other blocks would each
                    # cost another timeout on a shared bus. Fail them with the same reason.
                    rest = [name for b in state.blocks[index:] for name, _, _ in b.members]
                    samples += self._failed_samples(meter, rest, failure)
                    break
                samples += self._failed_samples(meter, [n for n, _, _ in block.members], failure)
                continue
            ts_ns = self._clock.now_ns()  # when the response arrived
            if words_out is None:
                samples += decoder.decode(meter, values, ts_ns)
                continue
            for name, words in extract(block, values).items():
                samples.append(_decode(meter, name, meter.points[name], words, ts_ns, block))
                if words_out is not None:
                    words_out[(meter.id, name)] = tuple(words)
        self._counters.last_latency_s = self._clock.monotonic_s() - started
        self._note_outcome(state, samples)
        self._plausibility.note(samples)
        return samples

    async def _read_block(
        self,
        client: _Client,
        meter: ModbusMeter,
        block: ReadBlock,
        decoder: _BlockDecoder,
        attempts: int,
    ) -> list[int] | list[bool]:
        reader = getattr(client, decoder.reader_name)
        where = decoder.where
        failure: _BlockFailed | None = None
        for _attempt in range(attempts):
            self._rx_during_request = False
            try:
                response = await reader(block.start, count=block.count, device_id=meter.unit_id)
            except ConnectionException as exc:
                raise _BlockFailed(
                    Quality.CONNECTION, f"connection to {self._key} lost ({exc})", reconnect=True
                ) from exc
            except ModbusIOException as exc:
                failure = self._no_answer(client, meter, where, exc)
                if failure.reconnect:
                    raise failure from exc
                continue
            except (ModbusException, OSError) as exc:
                raise _BlockFailed(
                    Quality.CONNECTION, f"{type(exc).__name__}: {exc}", reconnect=True
                ) from exc
            except Exception as exc:
                # pymodbus can raise other types from its transport (asyncio state errors after a
                # half-closed socket); polling must go on, with a fresh connection.
                log.warning("%s: unexpected %r from pymodbus; reconnecting", self._key, exc)
                raise _BlockFailed(
                    Quality.CONNECTION, f"{type(exc).__name__}: {exc}", reconnect=True
                ) from exc
            if isinstance(response, ExceptionResponse) or response.isError():
                code = int(getattr(response, "exception_code", 0))
                text = _EXCEPTION_TEXT.get(code, f"Modbus exception {code}")
                quality = Quality.ILLEGAL_ADDRESS if code == 2 else Quality.DEVICE_ERROR
                raise _BlockFailed(quality, f"unit {meter.unit_id} {where}: {text}")
            values = response.bits if decoder.is_bits else response.registers
            if len(values) < block.count:
                raise _BlockFailed(
                    Quality.DEVICE_ERROR,
                    f"unit {meter.unit_id} {where}: short response "
                    f"({len(values)} of {block.count} values); reconnecting",
                    reconnect=True,
                )
            return values if len(values) == block.count else list(values[: block.count])
        assert failure is not None  # attempts >= 1
        raise failure

    def _no_answer(
        self, client: _Client, meter: ModbusMeter, where: str, exc: ModbusIOException
    ) -> _BlockFailed:
        """Classify a ModbusIOException: pymodbus raises it for silence, for a peer that closed
        the socket while we waited, and for frames it could not use."""
        message = str(exc)
        if self._rx_during_request or "transaction id" in message or "device id" in message:
            # Bytes came back but no usable reply (pymodbus skips frames with another
            # transaction or unit id): a late answer to an old request or line noise. Only a
            # fresh connection re-synchronises the stream (DESIGN §9).
            return _BlockFailed(
                Quality.DEVICE_ERROR,
                f"unit {meter.unit_id} {where}: garbled or out-of-sequence reply "
                "(transaction id mismatch or line noise); reconnecting",
                reconnect=True,
            )
        if not client.connected and "CLOSING CONNECTION" not in message:
            return _BlockFailed(
                Quality.CONNECTION,
                f"{self._key} closed the connection while unit {meter.unit_id} was being read",
                reconnect=True,
            )
        return _BlockFailed(
            Quality.TIMEOUT,
            f"no answer from unit {meter.unit_id} within {meter.timeout_s:g} s "
            "(wrong unit id, meter off, or wiring)",
        )

    def _failed_samples(
        self, meter: ModbusMeter, names: Sequence[str], failure: _BlockFailed
    ) -> list[Sample]:
        ts_ns = self._clock.now_ns()
        return [
            Sample(
                ts_ns,
                meter.id,
                name,
                meter.points[name].role,
                meter.points[name].unit,
                None,
                failure.quality,
                detail=failure.detail,
            )
            for name in names
        ]

    # -- availability and backoff -----------------------------------------------------------

    def _note_outcome(self, state: _MeterState, samples: Sequence[Sample]) -> None:
        answered = any(s.quality in _ANSWERED for s in samples)
        if not answered:
            self._note_failure(state, samples[0].detail if samples else "no points")
            return
        # Some points answered: the meter is there; a bad point (e.g. a wrong address) is a
        # configuration problem, logged once, and must not slow down the good points.
        self._note_success(state)
        bad = next((s for s in samples if s.quality is not Quality.GOOD), None)
        if bad is not None and not state.partial_warned:
            state.partial_warned = True
            log.warning("meter %s: point %s failed: %s", state.meter.id, bad.point, bad.detail)

    def _note_failure(self, state: _MeterState, detail: str) -> None:
        self._counters.failures += 1
        state.failures += 1
        # The first failure retries on the next tick; then interval x 2^n, capped, so a dead
        # meter on a shared bus costs at most one timeout per MAX_BACKOFF_S.
        if state.failures > 1:
            backoff_s = min(
                MAX_BACKOFF_S, state.meter.interval_s * 2 ** min(state.failures - 1, 16)
            )
            state.retry_at_s = self._clock.monotonic_s() + backoff_s
        if state.available:
            state.available = False
            log.warning("meter %s unavailable on %s: %s", state.meter.id, self._key, detail)

    def _note_success(self, state: _MeterState) -> None:
        if not state.available:
            log.info(
                "meter %s on %s recovered after %d failed reads",
                state.meter.id,
                self._key,
                state.failures,
            )
        state.available = True
        state.failures = 0
        state.retry_at_s = 0.0

    # -- connection -------------------------------------------------------------------------

    async def _ensure_client(self, *, force: bool) -> _Client:
        if self._client is not None and self._client.connected:
            return self._client
        now = self._clock.monotonic_s()
        if now < self._next_connect_s and not force:
            raise _BlockFailed(
                Quality.CONNECTION,
                f"{self._key} not connected; next attempt in {self._next_connect_s - now:.1f} s",
            )
        self._drop_client()
        client = self._new_client()
        try:
            async with asyncio.timeout(self._connect_timeout_s + 1.0):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException):
            ok = False
        if not ok:
            with contextlib.suppress(Exception):
                client.close()
            self._connect_backoff_s = min(
                MAX_BACKOFF_S, max(MIN_CONNECT_BACKOFF_S, self._connect_backoff_s * 2)
            )
            self._next_connect_s = now + self._connect_backoff_s
            raise _BlockFailed(
                Quality.CONNECTION,
                f"cannot connect to {self._key} (refused or unreachable); "
                f"retrying in {self._connect_backoff_s:g} s",
            )
        self._connect_backoff_s = 0.0
        self._next_connect_s = 0.0
        self._counters.reconnects += 1
        self._client = client
        return client

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus hands every received chunk here before framing; if bytes arrive but no reply
        # comes out, the stream is out of step (see _no_answer).
        if not sending:
            self._rx_during_request = True
        return data

    def _new_client(self) -> _Client:
        meter = next(iter(self._meters.values())).meter
        # reconnect_delay=0: pymodbus must not reconnect behind our back; we back off ourselves.
        # retries=0: retries are ours, per meter (meter.retries).
        if isinstance(meter, ModbusTcpMeter):
            return AsyncModbusTcpClient(
                meter.host,
                port=meter.port,
                timeout=self._connect_timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace_packet,
            )
        return AsyncModbusSerialClient(
            meter.serial_port,
            baudrate=meter.baudrate,
            parity=meter.parity,
            stopbits=meter.stopbits,
            bytesize=meter.bytesize,
            timeout=self._connect_timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace_packet,
        )

    def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None


# A meter "answered" when it sent a reply, even one with an error for one point.
_ANSWERED = frozenset({Quality.GOOD, Quality.ILLEGAL_ADDRESS, Quality.DECODE_ERROR})


def _due_s(state: _MeterState) -> float:
    return max(state.next_deadline_s, state.retry_at_s)


_READER_NAME = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete_input": "read_discrete_inputs",
}
_STRUCT_CODE = {
    "uint16": "H", "int16": "h", "uint32": "I", "int32": "i",
    "uint64": "Q", "int64": "q", "float32": "f", "float64": "d",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class _FastPoint:
    """A point whose value is one ``struct`` unpack of the block's big-endian bytes (the
    Modbus standard order, ABCD): no per-read word shuffling."""

    name: str
    role: PointRole
    unit: str
    unpack_from: Callable[[bytes, int], tuple[int | float, ...]]
    byte_offset: int
    is_float: bool
    scale: float
    offset: float


class _BlockDecoder:
    """Everything about one block that does not change between reads, worked out once: the
    pymodbus method, the text naming it in failures, and how each point is decoded.

    Points in the standard order (and not state points) are decoded by one ``struct`` unpack
    from the block's bytes, with the arithmetic of ``decode_registers``, so the numbers are the
    same; every other point, and any value that is not finite, goes through :func:`_decode`,
    which also words the errors."""

    __slots__ = ("_block", "_fast", "_pack", "_points", "is_bits", "reader_name", "where")

    def __init__(self, meter: ModbusMeter, block: ReadBlock) -> None:
        self._block = block
        self.is_bits = block.is_bits
        self.reader_name = _READER_NAME[block.register_type]
        self.where = f"{block.register_type} {block.start}..{block.start + block.count - 1}"
        self._pack = struct.Struct(f">{block.count}H").pack
        self._points = [
            (name, meter.points[name], offset, length) for name, offset, length in block.members
        ]
        fast: list[_FastPoint | None] = []
        for name, point, offset, _length in self._points:
            standard = point.byte_order == "big" and (
                point.word_order == "big" or point.register_count == 1
            )
            if block.is_bits or not standard or point.role is PointRole.STATE:
                fast.append(None)
                continue
            fast.append(
                _FastPoint(
                    name,
                    point.role,
                    point.unit,
                    struct.Struct(">" + _STRUCT_CODE[point.type]).unpack_from,
                    2 * offset,
                    point.type.startswith("float"),
                    point.scale,
                    point.offset,
                )
            )
        self._fast = fast

    def decode(
        self, meter: ModbusMeter, values: Sequence[int] | Sequence[bool], ts_ns: int
    ) -> list[Sample]:
        data: bytes | None = None
        if not self.is_bits:
            try:
                data = self._pack(*values)
            except struct.error:  # not 16-bit words: decode_registers says why
                data = None
        meter_id = meter.id
        samples: list[Sample] = []
        for index, fast in enumerate(self._fast):
            if fast is not None and data is not None:
                raw = fast.unpack_from(data, fast.byte_offset)[0]
                if not fast.is_float or math.isfinite(raw):
                    samples.append(
                        Sample(
                            ts_ns,
                            meter_id,
                            fast.name,
                            fast.role,
                            fast.unit,
                            float(raw) * fast.scale + fast.offset,
                            Quality.GOOD,
                        )
                    )
                    continue
            name, point, offset, length = self._points[index]
            words = [int(v) for v in values[offset : offset + length]]
            samples.append(_decode(meter, name, point, words, ts_ns, self._block))
        return samples


def _decode(
    meter: ModbusMeter,
    name: str,
    point: ModbusPoint,
    words: list[int],
    ts_ns: int,
    block: ReadBlock,
) -> Sample:
    def bad(detail: str) -> Sample:
        return Sample(
            ts_ns, meter.id, name, point.role, point.unit, None, Quality.DECODE_ERROR, detail=detail
        )

    try:
        value = (
            decode_bits([bool(w) for w in words], point)
            if block.is_bits
            else decode_registers(words, point)
        )
    except DecodeError as exc:
        return bad(str(exc))
    state: str | None = None
    if point.role is PointRole.STATE and point.states is not None:
        code = round(value)
        mapped = point.states.get(code) if code == value else None
        if mapped is None:
            return bad(f"state code {value:g} is not in the value map {sorted(point.states)}")
        state = mapped.value
    return Sample(ts_ns, meter.id, name, point.role, point.unit, value, Quality.GOOD, state=state)


def connection_key(meter: ModbusMeter) -> str:
    if isinstance(meter, ModbusTcpMeter):
        return f"modbus_tcp:{meter.host}:{meter.port}"
    return f"modbus_rtu:{meter.serial_port}"


def build_modbus_sources(config: AgentConfig, clock: Clock) -> list[ModbusConnection]:
    """One connection per TCP host:port or serial port, with every enabled meter on it."""
    groups: dict[str, list[ModbusMeter]] = {}
    for meter in config.meters:
        if isinstance(meter, ModbusTcpMeter | ModbusRtuMeter) and meter.enabled:
            groups.setdefault(connection_key(meter), []).append(meter)
    limits = power_limits(config)
    # The connections' first polls are put in groups of up to 100 over the first interval (at
    # most 10 groups), so polls are not all due at the same instant: at start-up the first
    # meters are read after a tenth of 1,000 connections are opened rather than all of them,
    # and at run time 1,000 meters do not ask in one burst every second (poll lateness p99
    # reached 0.9 s). Groups rather than one point per connection: the polls of one group share
    # the event loop's passes, which costs far less CPU per read (one point each doubled it at
    # 100 meters, and 10 groups of 10 cost 1.24-1.46 x the bare library against 1.18-1.22 for
    # one group of 100; docs/performance.md).
    count = len(groups)
    slots = min(_MAX_START_GROUPS, max(1, -(-count // _CONNECTIONS_PER_START_GROUP)))
    return [
        ModbusConnection(
            key,
            meters,
            clock,
            limits,
            first_poll_after_s=(index * slots // count)
            / slots
            * min(meter.interval_s for meter in meters),
        )
        for index, (key, meters) in enumerate(groups.items())
    ]
