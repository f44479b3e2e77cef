"""Typed values shared by the pure core and the I/O shell.

Time inside the agent is UTC epoch nanoseconds (``int``) everywhere; conversion to and from
aware datetimes happens only at the edges (config, MES payloads, record JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum

NS_PER_S = 1_000_000_000


class PointRole(StrEnum):
    """What a meter point means to attribution."""

    ENERGY = "energy"  # cumulative counter (kWh, Wh, m3, ...)
    POWER = "power"  # instantaneous active power (kW, W)
    STATE = "state"  # machine state code
    OTHER = "other"  # shown by probe, stored, not attributed


class Quality(StrEnum):
    """Why a sample is or is not usable. Only GOOD samples feed attribution."""

    GOOD = "good"
    TIMEOUT = "timeout"
    CONNECTION = "connection"  # refused, reset, unreachable
    ILLEGAL_ADDRESS = "illegal_address"  # Modbus exception 2 / OPC UA BadNodeIdUnknown
    DEVICE_ERROR = "device_error"  # other Modbus exception or OPC UA bad status
    DECODE_ERROR = "decode_error"  # NaN, inf, value not in a state map
    SECURITY = "security"  # certificate / policy / user rejected


class MachineState(StrEnum):
    OFF = "off"
    IDLE = "idle"
    RUNNING = "running"
    SETUP = "setup"
    FAULT = "fault"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, init=False)
class Sample:
    """One observation of one meter point.

    ``value`` is in the point's configured unit (after scale and offset); ``None`` unless
    ``quality`` is GOOD. State points carry the mapped state name in ``state``.
    """

    ts_ns: int
    meter_id: str
    point: str
    role: PointRole
    unit: str
    value: float | None
    quality: Quality = Quality.GOOD
    state: str | None = None
    detail: str = ""  # why a sample is not good, for logs and the probe

    def __init__(
        self,
        ts_ns: int,
        meter_id: str,
        point: str,
        role: PointRole,
        unit: str,
        value: float | None,
        quality: Quality = Quality.GOOD,
        state: str | None = None,
        detail: str = "",
    ) -> None:
        # The generated frozen __init__ goes through object.__setattr__ by name for each field;
        # the slots' own setters do the same in about half the time, and every meter read
        # builds one Sample per point.
        _set_ts_ns(self, ts_ns)
        _set_meter_id(self, meter_id)
        _set_point(self, point)
        _set_role(self, role)
        _set_unit(self, unit)
        _set_value(self, value)
        _set_quality(self, quality)
        _set_state(self, state)
        _set_detail(self, detail)


(
    _set_ts_ns,
    _set_meter_id,
    _set_point,
    _set_role,
    _set_unit,
    _set_value,
    _set_quality,
    _set_state,
    _set_detail,
) = (Sample.__dict__[f.name].__set__ for f in fields(Sample))


def ns_from_datetime(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment.isoformat()} has no UTC offset")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1_000


def ns_from_iso(text: str) -> int:
    """Inverse of :func:`iso_from_ns` (any RFC 3339 timestamp with offset or ``Z``)."""
    return ns_from_datetime(datetime.fromisoformat(text))


def datetime_from_ns(ts_ns: int) -> datetime:
    seconds, rest = divmod(ts_ns, NS_PER_S)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=rest // 1_000)


def iso_from_ns(ts_ns: int) -> str:
    """RFC 3339 UTC with millisecond precision and a ``Z`` suffix."""
    return datetime_from_ns(ts_ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")
