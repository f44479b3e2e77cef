"""MQTT 5 PUBLISH properties of a record, encoded once per message without paho's
``Properties`` machinery (which builds its tables per object and validates every attribute:
more CPU than the rest of a record's publish on a fast link).

The bytes are those paho's ``Properties.pack`` gives for the same values (a test checks it):
Payload Format Indicator, Content Type, then the User Properties in their order.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Sequence

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.store.sqlite import OutboxMessage

RECORD_CONTENT_TYPE = "application/json"

_PAYLOAD_FORMAT_INDICATOR = 0x01
_CONTENT_TYPE = 0x03
_USER_PROPERTY = 0x26


def record_user_properties(
    payload: str | bytes, kind: str, seq: int, gateway: str | None
) -> list[tuple[str, str]]:
    """``schema_version`` and ``kind`` — the payload's own fields (``kind`` falls back to the
    outbox row's; ``schema_version`` is left out if the payload has none) — and, with
    ``gateway`` (the agent's client id), ``gateway`` and ``seq`` (the outbox sequence number)."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    fields = body if isinstance(body, dict) else {}
    own_kind = fields.get("kind")
    schema_version = fields.get("schema_version")
    return user_properties_of_fields(
        own_kind if isinstance(own_kind, str) else None,
        schema_version if isinstance(schema_version, str) else None,
        kind,
        seq,
        gateway,
    )


def user_properties_of_fields(
    payload_kind: str | None,
    schema_version: str | None,
    kind: str,
    seq: int,
    gateway: str | None,
) -> list[tuple[str, str]]:
    """:func:`record_user_properties` from the payload's fields already read (the strings, or
    None where the payload has none or not a string)."""
    user: list[tuple[str, str]] = []
    if schema_version is not None:
        user.append(("schema_version", schema_version))
    user.append(("kind", payload_kind if payload_kind is not None else kind))
    if gateway is not None:
        user += [("gateway", gateway), ("seq", str(seq))]
    return user


def _utf8(text: str) -> bytes:
    data = text.encode()
    if len(data) > 0xFFFF:
        raise ValueError(f"MQTT string of {len(data)} bytes (at most 65,535): {text[:40]!r}...")
    return struct.pack("!H", len(data)) + data


def _variable_byte_integer(value: int) -> bytes:
    if value < 128:
        return bytes((value,))
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | 0x80 if value else digit)
        if not value:
            return bytes(out)


@functools.lru_cache(maxsize=16)
def _text_header(content_type: str) -> bytes:
    return bytes((_PAYLOAD_FORMAT_INDICATOR, 1, _CONTENT_TYPE)) + _utf8(content_type)


def _user_property(name: str, value: str) -> bytes:
    return bytes((_USER_PROPERTY,)) + _utf8(name) + _utf8(value)


# The same few (kind, schema version, gateway) on every record: encoded once each.
_repeated_user_property = functools.lru_cache(maxsize=256)(_user_property)


def pack_properties(content_type: str, user: Sequence[tuple[str, str]]) -> bytes:
    """The properties of a UTF-8 text PUBLISH with this content type and user properties."""
    body = _text_header(content_type) + b"".join(
        _user_property(name, value) if name == "seq" else _repeated_user_property(name, value)
        for name, value in user
    )
    return _variable_byte_integer(len(body)) + body


class PackedProperties(Properties):
    """PUBLISH properties already encoded: paho's ``publish`` only ever calls ``pack()`` on
    them. ``Properties.__init__`` is skipped on purpose (its per-object tables are the cost)."""

    _packed: bytes

    def __init__(self, packed: bytes) -> None:
        # Properties.__setattr__ accepts property names only (and costs a table scan).
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        return self._packed

    def __str__(self) -> str:
        return f"PackedProperties({self._packed!r})"

    __repr__ = __str__


def record_publish_properties(
    payload: str | bytes, kind: str, seq: int, gateway: str | None
) -> PackedProperties:
    """A record's PUBLISH properties (see :func:`record_user_properties`), ready to send."""
    user = record_user_properties(payload, kind, seq, gateway)
    return PackedProperties(pack_properties(RECORD_CONTENT_TYPE, user))


def message_publish_properties(message: OutboxMessage, gateway: str | None) -> PackedProperties:
    """The same for an outbox message whose fields SQLite has picked out of the payload: the
    bytes ``pack_properties`` gives for :func:`message_user_properties`, put together directly
    (this runs once per record on the event loop)."""
    fields = _fields_found(message)
    if fields is None:
        user = record_user_properties(message.payload, message.kind, message.seq, gateway)
        return PackedProperties(pack_properties(RECORD_CONTENT_TYPE, user))
    own_kind, schema_version = fields
    body = _text_header(RECORD_CONTENT_TYPE)
    if schema_version is not None:
        body += _repeated_user_property("schema_version", schema_version)
    body += _repeated_user_property("kind", message.kind if own_kind is None else own_kind)
    if gateway is not None:
        body += _repeated_user_property("gateway", gateway)
        body += _user_property("seq", str(message.seq))
    return PackedProperties(_variable_byte_integer(len(body)) + body)


def message_user_properties(message: OutboxMessage, gateway: str | None) -> list[tuple[str, str]]:
    """:func:`record_user_properties` of an outbox message, from the raw values SQLite found
    where that gives what ``json.loads`` of the whole payload gives: SQLite found valid JSON,
    with no backslash in it (no escaped key can then spell a field's name: SQLite matches keys
    as written, json.loads after unescaping) and neither field's quoted name more than once (a
    repeated key: json.loads keeps the last, SQLite the first). The values themselves are
    decoded by json.loads. Other payloads are parsed whole. (Payloads json.loads refuses though
    they are valid JSON — numbers of over 4,300 digits, over ~1,000 levels of nesting — cannot
    come from json.dumps, which writes every record.)"""
    fields = _fields_found(message)
    if fields is None:
        return record_user_properties(message.payload, message.kind, message.seq, gateway)
    return user_properties_of_fields(*fields, message.kind, message.seq, gateway)


def _fields_found(message: OutboxMessage) -> tuple[str | None, str | None] | None:
    """(kind, schema_version) from SQLite's raw values, None where they may differ from what
    json.loads of the payload gives (see :func:`message_user_properties`)."""
    payload = message.payload
    if (
        message.fields is None
        or b"\\" in payload
        or payload.count(b'"kind"') > 1
        or payload.count(b'"schema_version"') > 1
    ):
        return None
    own_kind, schema_version = json.loads(message.fields)
    return (
        own_kind if isinstance(own_kind, str) else None,
        schema_version if isinstance(schema_version, str) else None,
    )
