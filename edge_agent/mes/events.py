"""The MES order-event contract (DESIGN §5, docs/contracts.md) and its validation (pure).

The MES stream is the agent's most exposed input: another team's software on a shared broker.
:func:`parse_event` therefore never raises anything but :class:`EventRejected` — whatever the
bytes — and checks the cheap bounds (size, nesting depth) before ``json.loads`` sees them.
Identifiers are matched exactly: whitespace around an id or a control character in it is a
rejection, never silently "fixed" (``"laser-01 "`` must not open an order on ``laser-01``).

Unknown extra fields are accepted (up to a bound) and kept in ``raw_json``: an MES that adds a
field must not stop production accounting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge_agent.config.models import MesConfig
from edge_agent.domain import NS_PER_S, ns_from_datetime
from edge_agent.errors import EventRejected

EventType = Literal["start", "stop", "pause", "resume", "cancel", "lot_complete"]
ORDER_EVENT_TYPES = ("start", "stop", "pause", "resume", "cancel")
ID_FIELDS = ("event_id", "order_id", "lot_id", "equipment_id", "supersedes")
TEXT_FIELDS = ("product_id", "unit")

# RFC 3339 date-time (section 5.6): pydantic alone would also take "1769846400" as Unix time.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"
)
# Escapes, then strings, are cut out before brackets are counted. Two simple patterns, each
# linear: one pattern for escaped strings backtracks quadratically on an unterminated string full
# of escaped quotes (64 KiB of '"\\' took 27 s).
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class MesEventPayload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: str
    type: EventType
    ts: datetime
    order_id: str | None = None
    lot_id: str
    equipment_id: str | None = None
    product_id: str | None = None
    # strict: a JSON number, never "5" or true
    quantity_good: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    quantity_scrap: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    unit: str = "piece"
    supersedes: str | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _rfc3339_with_offset(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _RFC3339.match(value):
            raise ValueError(
                f"{value!r} is not an RFC 3339 timestamp (expected e.g. 2026-01-31T08:00:00+09:00)"
            )
        return value

    @field_validator("ts")
    @classmethod
    def _has_offset(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError(
                f"{value.isoformat()} has no UTC offset (expected e.g. 2026-01-31T08:00:00+09:00)"
            )
        return value

    @model_validator(mode="after")
    def _fields_for_type(self) -> MesEventPayload:
        if self.type != "lot_complete":
            for name in ("order_id", "equipment_id"):
                if getattr(self, name) is None:
                    raise _missing(f"{name} is required for a {self.type!r} event")
        if self.type == "start" and self.product_id is None:
            raise _missing("product_id is required for a 'start' event")
        if self.type == "stop":
            for name in ("quantity_good", "quantity_scrap"):
                if getattr(self, name) is None:
                    raise _missing(f"{name} is required for a 'stop' event (a number >= 0)")
        if self.supersedes is not None and self.supersedes == self.event_id:
            raise ValueError(f"supersedes {self.supersedes!r} names the event itself")
        return self


KNOWN_FIELDS = frozenset(MesEventPayload.model_fields)
_MISSING_FOR_TYPE = "missing_for_type"


def _missing(message: str) -> PydanticCustomError:
    # Its own error type: the rejection code must never depend on the text (which quotes input).
    return PydanticCustomError(_MISSING_FOR_TYPE, "{detail}", {"detail": message})


@dataclass(frozen=True, slots=True)
class OrderEvent:
    event_id: str
    type: str
    ts_ns: int
    order_id: str | None
    lot_id: str
    equipment_id: str | None
    product_id: str | None
    quantity_good: float | None
    quantity_scrap: float | None
    unit: str
    raw_json: str
    supersedes: str | None = None


def parse_event(
    payload: bytes,
    known_equipment: Collection[str],
    *,
    limits: MesConfig | None = None,
    now_ns: int | None = None,
) -> OrderEvent:
    """Validate one MQTT payload; raises only :class:`EventRejected` (reason and code).

    ``limits`` bounds size, depth, lengths and extra fields (the intake always passes them;
    re-reading an event already stored does not). With ``now_ns``, ``ts`` must lie in the
    configured window around it.
    """
    try:
        return _parse(payload, known_equipment, limits, now_ns)
    except EventRejected:
        raise
    except Exception as exc:  # any surprise is this message's problem, not the agent's
        raise EventRejected(
            f"payload could not be processed: {type(exc).__name__}: {exc}"[:300], "bad_payload"
        ) from None


def _parse(
    payload: bytes,
    known_equipment: Collection[str],
    limits: MesConfig | None,
    now_ns: int | None,
) -> OrderEvent:
    if limits is not None:
        _check_size_and_depth(payload, limits)
    try:
        text = payload.decode("utf-8")  # RFC 8259: JSON between systems is UTF-8
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except EventRejected:
        raise
    except RecursionError:
        raise EventRejected("not valid JSON: nested too deeply", "too_deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise EventRejected(f"not valid JSON: {exc}", "bad_json") from None
    if not isinstance(data, dict):
        raise EventRejected(f"expected a JSON object, got {type(data).__name__}", "not_an_object")
    if limits is not None:
        extra = sorted(key for key in data if key not in KNOWN_FIELDS)
        if len(extra) > limits.max_extra_fields:
            raise EventRejected(
                f"{len(extra)} unknown fields (at most {limits.max_extra_fields}): "
                f"{', '.join(repr(key[:40]) for key in extra[:5])}, ...",
                "too_many_fields",
            )
    _check_identifiers(data, limits)
    try:
        event = MesEventPayload.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        code = "missing_field" if all(_is_missing(e) for e in errors) else "invalid_field"
        raise EventRejected("; ".join(_describe(error) for error in errors), code) from None
    ts_ns = ns_from_datetime(event.ts)
    if limits is not None and now_ns is not None:
        _check_ts_window(event.ts, ts_ns, now_ns, limits)
    if event.equipment_id is not None and event.equipment_id not in known_equipment:
        known = sorted(known_equipment)
        shown = ", ".join(known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
        raise EventRejected(
            f"equipment_id {event.equipment_id!r} is not configured (known: {shown})",
            "unknown_equipment",
        )
    return OrderEvent(
        event_id=event.event_id,
        type=event.type,
        ts_ns=ts_ns,
        order_id=event.order_id,
        lot_id=event.lot_id,
        equipment_id=event.equipment_id,
        product_id=event.product_id,
        quantity_good=event.quantity_good,
        quantity_scrap=event.quantity_scrap,
        unit=event.unit,
        raw_json=text,  # as received: the audit trail keeps the MES's own text
        supersedes=event.supersedes,
    )


def json_depth(payload: bytes, stop_above: int) -> int:
    """Nesting depth of a JSON text, counted outside strings; stops early above ``stop_above``."""
    brackets = _STRING.sub(b"", _ESCAPE.sub(b"", payload)).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in (0x5B, 0x7B) else -1  # [ {
        if depth > deepest:
            deepest = depth
            if deepest > stop_above:
                break
    return deepest


def _check_size_and_depth(payload: bytes, limits: MesConfig) -> None:
    if len(payload) > limits.max_payload_bytes:
        raise EventRejected(
            f"payload is {len(payload)} bytes (at most {limits.max_payload_bytes})",
            "payload_too_large",
        )
    if json_depth(payload, limits.max_json_depth) > limits.max_json_depth:
        raise EventRejected(f"JSON nested deeper than {limits.max_json_depth} levels", "too_deep")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # json.loads would keep the last silently: two readers could see two different events.
            raise EventRejected(
                f"field {key[:60]!r} appears twice in one object", "duplicate_field"
            )
        out[key] = value
    return out


def _check_identifiers(data: dict[str, Any], limits: MesConfig | None) -> None:
    for name in (*ID_FIELDS, *TEXT_FIELDS):
        value = data.get(name)
        if not isinstance(value, str):
            continue  # absent or mistyped: the model says so
        bound = None
        if limits is not None:
            bound = limits.max_id_length if name in ID_FIELDS else limits.max_text_length
        problem = identifier_problem(value, bound)
        if problem is not None:
            raise EventRejected(f"{name}: {value[:80]!r} is not valid: {problem}", "invalid_id")


def identifier_problem(value: str, max_length: int | None) -> str | None:
    """Why ``value`` cannot be an exact identifier, or None. Never normalises it."""
    if not value:
        return "it is empty"
    if max_length is not None and len(value) > max_length:
        return f"{len(value)} characters long (at most {max_length})"
    if value != value.strip():
        return "leading or trailing whitespace (ids are matched exactly, never trimmed)"
    if not value.isprintable():
        return "it contains a control or invisible character"
    return None


def _check_ts_window(ts: datetime, ts_ns: int, now_ns: int, limits: MesConfig) -> None:
    earliest = now_ns - int(limits.ts_max_age_s * NS_PER_S)
    latest = now_ns + int(limits.ts_max_ahead_s * NS_PER_S)
    if not earliest <= ts_ns <= latest:
        raise EventRejected(
            f"ts: {ts.isoformat()} is outside the accepted window of "
            f"{limits.ts_max_age_s / 86400:g} days before to {limits.ts_max_ahead_s / 86400:g} "
            "days after the agent's clock (mes.ts_max_age_s, mes.ts_max_ahead_s)",
            "ts_out_of_range",
        )


def _is_missing(error: Any) -> bool:
    return error["type"] in ("missing", _MISSING_FOR_TYPE)


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "event"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{field}: required field is missing"
    if not error["loc"]:
        return message
    shown = error.get("input")
    preview = repr(shown)[:80] if not isinstance(shown, dict) else "{...}"
    return f"{field}: {preview} is not valid: {message}"
