"""The MES order-event contract (DESIGN §5) and its validation.

Unknown extra fields are accepted and kept in ``raw_json`` (stored with the event): an MES that
adds a field must not stop production accounting. Everything the agent relies on is checked, and
a rejection names the field, the bad value and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.domain import ns_from_datetime
from edge_agent.errors import EventRejected

EventType = Literal["start", "stop", "pause", "resume", "lot_complete"]


class MesEventPayload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=True)

    event_id: str = Field(min_length=1, max_length=200)
    type: EventType
    ts: datetime
    order_id: str | None = Field(default=None, min_length=1, max_length=200)
    lot_id: str = Field(min_length=1, max_length=200)
    equipment_id: str | None = Field(default=None, min_length=1)
    product_id: str | None = Field(default=None, min_length=1)
    quantity_good: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    quantity_scrap: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    unit: str = Field(default="piece", min_length=1)

    @field_validator("ts", mode="before")
    @classmethod
    def _rfc3339_with_offset(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not an RFC 3339 timestamp string")
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
                    raise ValueError(f"{name} is required for a {self.type!r} event")
        if self.type == "start" and self.product_id is None:
            raise ValueError("product_id is required for a 'start' event")
        if self.type == "stop":
            for name in ("quantity_good", "quantity_scrap"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required for a 'stop' event (a number >= 0)")
        return self


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


def parse_event(payload: bytes, known_equipment: Collection[str]) -> OrderEvent:
    """Validate one MQTT payload; raises EventRejected with the reason."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventRejected(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventRejected(f"expected a JSON object, got {type(data).__name__}")
    try:
        event = MesEventPayload.model_validate(data)
    except ValidationError as exc:
        raise EventRejected("; ".join(_describe(error) for error in exc.errors())) from None
    if event.equipment_id is not None and event.equipment_id not in known_equipment:
        raise EventRejected(
            f"equipment_id {event.equipment_id!r} is not configured "
            f"(known: {', '.join(sorted(known_equipment))})"
        )
    return OrderEvent(
        event_id=event.event_id,
        type=event.type,
        ts_ns=ns_from_datetime(event.ts),
        order_id=event.order_id,
        lot_id=event.lot_id,
        equipment_id=event.equipment_id,
        product_id=event.product_id,
        quantity_good=event.quantity_good,
        quantity_scrap=event.quantity_scrap,
        unit=event.unit,
        raw_json=json.dumps(data, separators=(",", ":"), sort_keys=True),
    )


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "event"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{field}: required field is missing"
    if not error["loc"]:
        return message
    return f"{field}: {error.get('input')!r} is not valid: {message}"
