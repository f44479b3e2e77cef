"""Request and response bodies of the API (pydantic), as PACT 3.0's OpenAPI file defines them.

Written by hand from ``pact-openapi-3.0.3.yaml`` (``components.schemas``: Error, BaseEvent,
RequestCreatedEvent, RequestFulfilledEvent, RequestRejectedEvent, PublishedEvent, the list and
get responses of ``paths``) and checked against the unmodified file by the tests (property
names, required properties and every body the API sends). ProductFootprints themselves are
built and validated by :mod:`edge_agent.footprint`; here they are JSON objects.

Two places where the PACT texts disagree, and what is used here:

* the 404 error code: rest-api.md's table says ``NoSuchFootprint``, the OpenAPI file's
  ``Error.code`` enum (which bodies are validated against, and the Conformance Tool checks)
  says ``NotFound`` ("404 NoSuchFootprint"): ``NotFound``;
* ``NotImplemented``: the table says HTTP 400, the enum's comment 501: 400 (the normative
  table).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "CREATED",
    "FULFILLED",
    "PUBLISHED",
    "REJECTED",
    "ErrorBody",
    "ErrorCode",
    "EventBase",
    "FootprintListResponse",
    "FootprintResponse",
    "OAuthErrorBody",
    "PublishedData",
    "PublishedEvent",
    "RequestCreatedData",
    "RequestCreatedEvent",
    "RequestFulfilledData",
    "RequestFulfilledEvent",
    "RequestRejectedData",
    "RequestRejectedEvent",
    "TokenResponse",
    "parse_pact_time",
]

CREATED = "org.wbcsd.pact.ProductFootprint.RequestCreatedEvent.3"
FULFILLED = "org.wbcsd.pact.ProductFootprint.RequestFulfilledEvent.3"
REJECTED = "org.wbcsd.pact.ProductFootprint.RequestRejectedEvent.3"
PUBLISHED = "org.wbcsd.pact.ProductFootprint.PublishedEvent.3"

ErrorCode = Literal[
    "BadRequest", "AccessDenied", "TokenExpired", "NotFound", "InternalError", "NotImplemented"
]


def parse_pact_time(value: object) -> datetime:
    """A filter's date-time: RFC 3339 (``2025-04-01T00:00:00Z``) and the shorter forms the
    spec's own examples use (``2025-04-01T00:00Z``, a date); no offset means UTC. A ``+``
    offset that a query string turned into a space is read back."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if " " in text and "T" in text:
            text = text.replace(" ", "+")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is not an RFC 3339 date-time") from None
    else:
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _uuid(value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None
    return value


NonEmpty = Annotated[str, Field(min_length=1)]
UuidText = Annotated[str, AfterValidator(_uuid)]
PactTime = Annotated[datetime, BeforeValidator(parse_pact_time)]


# -- authentication (RFC 6749 §5.1, §5.2) -------------------------------------------------------


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class OAuthErrorBody(BaseModel):
    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    ]
    error_description: str | None = None


# -- API errors and footprints -----------------------------------------------------------------


class ErrorBody(BaseModel):
    """``components.schemas.Error``."""

    code: ErrorCode
    message: str


class FootprintListResponse(BaseModel):
    """``paths./3/footprints.get.responses.200``: ``data`` never null, ``[]`` when empty."""

    data: list[dict[str, Any]]


class FootprintResponse(BaseModel):
    """``paths./3/footprints/{id}.get.responses.200``."""

    data: dict[str, Any]


# -- events (CloudEvents 1.0, structured content mode) -----------------------------------------


class EventBase(BaseModel):
    """``components.schemas.BaseEvent``: every attribute required (PACT requires ``time``,
    which CloudEvents leaves optional). Other CloudEvents attributes (``datacontenttype``,
    extensions) are allowed."""

    model_config = ConfigDict(extra="allow")

    type: str
    specversion: Literal["1.0"]
    id: NonEmpty
    source: NonEmpty
    time: PactTime
    data: dict[str, Any]


class RequestCreatedData(BaseModel):
    """The criteria of ListFootprints (the same filters, the same meaning) and a comment.
    Unknown criteria are refused rather than ignored: ignoring one would answer with more
    footprints than were asked for."""

    model_config = ConfigDict(extra="forbid")

    # As in ListFootprints, a value that is not a URN is not refused: it matches nothing.
    productId: list[NonEmpty] | None = Field(default=None, min_length=1)  # PACT's names
    companyId: list[NonEmpty] | None = Field(default=None, min_length=1)
    geography: list[NonEmpty] | None = Field(default=None, min_length=1)
    classification: list[NonEmpty] | None = Field(default=None, min_length=1)
    validOn: PactTime | None = None
    validAfter: PactTime | None = None
    validBefore: PactTime | None = None
    status: str | None = None
    comment: str | None = None


class RequestCreatedEvent(EventBase):
    type: Literal["org.wbcsd.pact.ProductFootprint.RequestCreatedEvent.3"]
    data: RequestCreatedData  # type: ignore[assignment]


class PublishedData(BaseModel):
    pfIds: list[UuidText] = Field(min_length=1)


class PublishedEvent(EventBase):
    type: Literal["org.wbcsd.pact.ProductFootprint.PublishedEvent.3"]
    data: PublishedData  # type: ignore[assignment]


class RequestFulfilledData(BaseModel):
    requestEventId: str
    pfs: list[dict[str, Any]] = Field(min_length=1)


class RequestFulfilledEvent(EventBase):
    type: Literal["org.wbcsd.pact.ProductFootprint.RequestFulfilledEvent.3"]
    data: RequestFulfilledData  # type: ignore[assignment]


class RequestRejectedData(BaseModel):
    requestEventId: str
    error: ErrorBody


class RequestRejectedEvent(EventBase):
    type: Literal["org.wbcsd.pact.ProductFootprint.RequestRejectedEvent.3"]
    data: RequestRejectedData  # type: ignore[assignment]


EVENT_MODELS: dict[str, type[EventBase]] = {
    CREATED: RequestCreatedEvent,
    FULFILLED: RequestFulfilledEvent,
    REJECTED: RequestRejectedEvent,
    PUBLISHED: PublishedEvent,
}
