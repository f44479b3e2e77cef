"""Fuzz of the MES parser (issue 7): no payload may crash it, stall it or slip past it altered.

Properties of :func:`edge_agent.mes.events.parse_event` over arbitrary bytes, arbitrary JSON
values (deep, huge, unicode, NaN/Infinity, numbers as strings, duplicate keys written as raw
text) and near-valid events (a valid event with one field mutated):

- it raises nothing but ``EventRejected``, with a code from the documented set and a reason that
  names the offending field;
- a valid event comes back with its identifiers exactly as sent (never trimmed);
- the largest payload it takes (64 KiB) costs well under 50 ms of CPU, whatever its bytes;
- 100,000 levels of nesting are rejected as ``too_deep``, never a ``RecursionError``.

The default run generates ``EDGE_AGENT_FUZZ_EXAMPLES`` examples per property (default 200, a
few seconds each). The tests marked ``long`` (excluded from the default run) generate
``EDGE_AGENT_FUZZ_LONG_EXAMPLES`` per property (default 25,000: 125,000 payloads over the five
fuzz properties, plus 25,000 payloads of 64 KiB for the timing property once its bug is fixed):

    .venv/bin/pytest -m long tests/unit/test_mes_fuzz.py

Run ``-m "long or not long"`` for both. Bugs found are pinned by regression tests (each failed before its fix).
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from edge_agent.config.models import MesConfig
from edge_agent.errors import EventRejected
from edge_agent.mes.events import ID_FIELDS, KNOWN_FIELDS, TEXT_FIELDS, OrderEvent, parse_event

EXAMPLES = int(os.environ.get("EDGE_AGENT_FUZZ_EXAMPLES", "200"))
LONG_EXAMPLES = int(os.environ.get("EDGE_AGENT_FUZZ_LONG_EXAMPLES", "25000"))
# One short and one long (marked) run of each property.
RUNS = [
    pytest.param(EXAMPLES, id="short"),
    pytest.param(LONG_EXAMPLES, id="long", marks=[pytest.mark.long, pytest.mark.timeout(7200)]),
]

LIMITS = MesConfig()
NOW_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z, the agent's clock
NOW = datetime(2026, 1, 1, tzinfo=UTC)
EQUIPMENT = frozenset({"laser-01", "press brake", "Öfen-Ⅱ"})
EVENT_TYPES = ("start", "stop", "pause", "resume", "cancel", "lot_complete")
STRING_FIELDS = (*ID_FIELDS, *TEXT_FIELDS, "type", "ts")
# Every code parse_event documents. bad_payload is its catch-all for an exception nobody
# anticipated: allowed by the contract, but the fuzz treats it as a finding (see CODES).
ALL_CODES = frozenset(
    {
        "payload_too_large",
        "too_deep",
        "bad_json",
        "duplicate_field",
        "not_an_object",
        "too_many_fields",
        "invalid_id",
        "missing_field",
        "invalid_field",
        "ts_out_of_range",
        "unknown_equipment",
        "bad_payload",
    }
)
CODES = ALL_CODES - {"bad_payload"}
# RFC 3339 section 5.6 date-time (its note allows a space for the T), offset required.
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
# CPU budget of one 64 KiB payload, and the cut-off that stops a pathological one early.
PARSE_BUDGET_S = 0.050
CUTOFF_S = 0.5


def fuzz(
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], None],
    examples: int,
    *,
    explicit: Sequence[Any] = (),
    phases: tuple[Phase, ...] = tuple(Phase),
) -> Callable[[], None]:
    """A hypothesis test of ``check`` over ``strategy``: ``explicit`` values first, then
    ``examples`` generated ones (checked: the long runs promise a number)."""
    calls = 0

    @settings(
        max_examples=examples,
        deadline=None,
        phases=phases,
        database=None,  # every property shares this wrapper: no cross-replayed examples
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def run(value: Any) -> None:
        nonlocal calls
        calls += 1
        check(value)

    for value in explicit:
        run = example(value)(run)

    def run_all() -> None:
        run()
        assert calls >= examples + len(explicit), f"{calls} examples run, {examples} asked"

    return run_all


def outcome(
    payload: bytes, *, limits: MesConfig | None = LIMITS, now_ns: int | None = NOW_NS
) -> OrderEvent | EventRejected:
    """parse_event's answer; any exception other than EventRejected fails the test."""
    try:
        event = parse_event(payload, EQUIPMENT, limits=limits, now_ns=now_ns)
    except EventRejected as exc:
        rejected = exc
    else:
        assert isinstance(event, OrderEvent)
        return event
    assert rejected.code in CODES, (rejected.code, rejected.reason)
    assert rejected.reason, rejected.code
    assert str(rejected) == rejected.reason
    return rejected


def check_accepted(event: OrderEvent, payload: bytes) -> None:
    """An accepted event says exactly what the payload says, within the limits."""
    data = json.loads(payload)
    assert isinstance(data, dict)
    assert len(payload) <= LIMITS.max_payload_bytes
    for name in (*ID_FIELDS, *TEXT_FIELDS):
        value = data.get(name)
        if name == "unit" and value is None:
            assert event.unit == "piece"
            continue
        assert getattr(event, name) == value, name  # exact: never trimmed or normalised
        if value is not None:
            assert value == value.strip(), name
            assert value.isprintable(), name
            assert 0 < len(value) <= 128, name
    assert event.type == data["type"] in EVENT_TYPES
    assert RFC3339.fullmatch(data["ts"]), data["ts"]  # never a number, never without offset
    assert NOW_NS - 30 * 86400 * 10**9 <= event.ts_ns <= NOW_NS + 86400 * 10**9
    assert event.equipment_id is None or event.equipment_id in EQUIPMENT
    for name in ("quantity_good", "quantity_scrap"):
        quantity = getattr(event, name)
        assert quantity is None or (math.isfinite(quantity) and quantity >= 0), (name, quantity)
        sent = data.get(name)  # a JSON number: never "5", never true
        assert sent is None or (isinstance(sent, int | float) and not isinstance(sent, bool))
    assert json.loads(event.raw_json) == json.loads(payload) or _has_nan(data)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


def depth(value: Any) -> int:
    """Nesting depth as parse_event counts it (brackets outside strings)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def dumps(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON text of ``value`` (NaN/Infinity literals allowed); raw UTF-8 unless ``ascii_only``
    or a lone surrogate forces \\u escapes."""
    try:
        return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode()
    except UnicodeEncodeError:
        return json.dumps(value, allow_nan=True).encode()


def with_note(data: dict[str, Any], room: int, piece: str) -> bytes:
    """``data`` plus a last field "note" whose string text is ``piece`` repeated to ``room``
    bytes (cut wherever that falls, escapes included)."""
    body = dumps({**{k: v for k, v in data.items() if k != "note"}, "note": ""})
    assert body.endswith(b'"note": ""}')
    text = (piece * (room // max(1, len(piece)) + 1))[: max(0, room)]
    return body[:-2] + text.encode() + b'"}'


# -- strategies -------------------------------------------------------------------------------

# Identifiers as the parser must take them: printable, no whitespace at either end, ≤ 128.
id_chars = st.characters(exclude_categories=("C", "Z")) | st.just(" ")
identifiers = st.text(id_chars, min_size=1, max_size=128).filter(lambda s: s == s.strip())
# Characters an identifier must never carry: controls, format, separators, surrogates.
bad_chars = st.characters(
    categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"), exclude_characters=" "
) | st.sampled_from(
    ["\x00", "\t", "\n", "\r", "\x7f", "\u00a0", "\u200b", "\u2028", "\ufeff", "\ud800"]
)
whitespace = st.sampled_from([" ", "\t", "\n", "\r", "\u00a0", "\u2003", "\u3000", "\x0b"])
numbers_as_strings = st.one_of(
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "0x10", " 5 ", "1_000"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # beyond what a float holds
    st.floats(),  # NaN and ±Infinity included: written as NaN/Infinity literals
    st.text(),
    st.text(st.characters(codec="utf-8")),
    st.text(bad_chars),
    numbers_as_strings,
    st.sampled_from(EVENT_TYPES),
    st.sampled_from(sorted(EQUIPMENT)),
)
keys = st.one_of(st.sampled_from(sorted(KNOWN_FIELDS)), st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
    max_leaves=24,
)


@st.composite
def deep_values(draw: st.DrawFn) -> Any:
    """A JSON value wrapped in up to 40 lists or objects: often past the 16-level limit."""
    value = draw(json_values)
    for kind in draw(st.lists(st.sampled_from(["list", "object"]), max_size=40)):
        value = [value] if kind == "list" else {draw(keys): value}
    return value


@st.composite
def huge_strings(draw: st.DrawFn) -> str:
    """Strings of 10 KB to 100 KB (around the 64 KiB payload limit), built by repetition."""
    piece = draw(st.text(min_size=1, max_size=8))
    return piece * (draw(st.integers(10_000, 100_000)) // len(piece) + 1)


@st.composite
def ts_in_window(draw: st.DrawFn) -> tuple[str, int]:
    """An RFC 3339 timestamp inside the window, in any UTC offset, and its epoch ns."""
    offset_us = draw(st.integers(-30 * 86400 * 10**6, 86400 * 10**6))
    moment = NOW + timedelta(microseconds=offset_us)
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    local = moment.astimezone(timezone(timedelta(minutes=minutes)))
    spec = "microseconds" if moment.microsecond else draw(st.sampled_from(["seconds", "auto"]))
    text = local.isoformat(timespec=spec)
    if minutes == 0 and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    return text, NOW_NS + offset_us * 1000


quantities = st.one_of(
    st.integers(0, 10**15), st.floats(min_value=0, allow_nan=False, allow_infinity=False)
)
extra_keys = st.text(max_size=20).filter(lambda k: k not in KNOWN_FIELDS)
small_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=8,
)


@dataclass(frozen=True)
class Valid:
    data: dict[str, Any]
    ts_ns: int


@st.composite
def valid_events(draw: st.DrawFn, types: tuple[str, ...] = EVENT_TYPES) -> Valid:
    """A valid event of any type: exact ids (inner spaces, any script), optional fields, extras."""
    kind = draw(st.sampled_from(types))
    ts, ts_ns = draw(ts_in_window())
    data: dict[str, Any] = {"event_id": draw(identifiers), "type": kind, "ts": ts}
    data["lot_id"] = draw(identifiers)
    equipment = st.sampled_from(sorted(EQUIPMENT))
    if kind != "lot_complete" or draw(st.booleans()):
        data["order_id"] = draw(identifiers)
    if kind != "lot_complete" or draw(st.booleans()):
        data["equipment_id"] = draw(equipment)
    if kind == "start" or draw(st.booleans()):
        data["product_id"] = draw(identifiers)
    if kind == "stop" or (kind == "lot_complete" and draw(st.booleans())):
        data["quantity_good"] = draw(quantities)
    if kind == "stop":
        data["quantity_scrap"] = draw(quantities)
    if draw(st.booleans()):
        data["unit"] = draw(identifiers)
    if draw(st.booleans()):
        data["supersedes"] = draw(identifiers.filter(lambda s: s != data["event_id"]))
    extras = draw(st.dictionaries(extra_keys, small_json, max_size=LIMITS.max_extra_fields))
    return Valid({**extras, **data}, ts_ns)


# -- arbitrary bytes --------------------------------------------------------------------------

JSON_TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b'"',
    b"\\",
    b"\\u",
    b"\\ud800",
    b"0",
    b"-1",
    b"1e999",
    b"NaN",
    b"Infinity",
    b"true",
    b"null",
    b" ",
    b"\n",
    b'"event_id"',
    b'"type"',
    b'"start"',
    b'"ts"',
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\xef\xbb\xbf",
    b"9" * 5000,
]
json_ish_bytes = st.lists(st.sampled_from(JSON_TOKENS), max_size=60).map(b"".join)
arbitrary_bytes = st.one_of(st.binary(max_size=2048), json_ish_bytes)


def check_bytes(payload: bytes) -> None:
    for limits, now_ns in ((LIMITS, NOW_NS), (None, None)):  # intake, and re-reading stored
        result = outcome(payload, limits=limits, now_ns=now_ns)
        if isinstance(result, OrderEvent) and limits is not None:
            check_accepted(result, payload)


@pytest.mark.parametrize("examples", RUNS)
def test_arbitrary_bytes_are_parsed_or_rejected_never_crash(examples: int) -> None:
    fuzz(arbitrary_bytes, check_bytes, examples)()


# -- arbitrary JSON values --------------------------------------------------------------------


@st.composite
def json_payloads(draw: st.DrawFn) -> tuple[bytes, Any]:
    """(payload, the value it encodes): JSON values, deep ones, objects with the event's keys,
    valid events with one field replaced by any JSON value or a huge string."""
    kind = draw(st.sampled_from(["value", "deep", "fields", "replace", "huge"]))
    if kind == "value":
        value = draw(json_values)
    elif kind == "deep":
        value = draw(deep_values())
    elif kind == "fields":
        value = draw(st.fixed_dictionaries({}, optional=dict.fromkeys(KNOWN_FIELDS, json_values)))
    else:
        value = dict(draw(valid_events()).data)
        name = draw(st.sampled_from([*sorted(KNOWN_FIELDS), "extra"]))
        value[name] = draw(json_values if kind == "replace" else huge_strings())
    return dumps(value, ascii_only=draw(st.booleans())), value


def check_json(item: tuple[bytes, Any]) -> None:
    payload, value = item
    result = outcome(payload)
    if len(payload) > LIMITS.max_payload_bytes:
        expected: str | None = "payload_too_large"
    elif depth(value) > LIMITS.max_json_depth:
        expected = "too_deep"
    elif not isinstance(value, dict):
        expected = "not_an_object"
    else:
        expected = None  # any known code, or accepted
    if expected is not None:
        assert isinstance(result, EventRejected), (expected, result)
        assert result.code == expected, (result.code, result.reason)
    elif isinstance(result, OrderEvent):
        check_accepted(result, payload)


@pytest.mark.parametrize("examples", RUNS)
def test_arbitrary_json_values_are_parsed_or_rejected_never_crash(examples: int) -> None:
    fuzz(json_payloads(), check_json, examples)()


@st.composite
def duplicate_key_payloads(draw: st.DrawFn) -> tuple[bytes, str]:
    """A valid event written as raw text with one key twice (maybe spelled with \\u escapes),
    at the top level or inside an extra field."""
    data = draw(valid_events()).data
    pairs = [(json.dumps(k), json.dumps(v)) for k, v in data.items()]
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(data)))
        value = draw(st.sampled_from([json.dumps(data[name]), json.dumps(draw(small_json))]))
    else:  # inside a nested object
        name = draw(st.text(min_size=1, max_size=10))
        inner = f"{{{json.dumps(name)}:1,{json.dumps(name)}:2}}"
        pairs.append((json.dumps("nested-extra"), inner))
        return ("{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}").encode(), name
    spelled = json.dumps(name)
    if draw(st.booleans()):  # the same key, escaped: equal once decoded
        spelled = '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c for c in name) + '"'
    pairs.insert(draw(st.integers(0, len(pairs))), (spelled, value))
    return ("{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}").encode(), name


def check_duplicate_keys(item: tuple[bytes, str]) -> None:
    payload, name = item
    result = outcome(payload)
    assert isinstance(result, EventRejected)
    assert result.code == "duplicate_field", (result.code, result.reason)
    assert repr(name[:60]) in result.reason


@pytest.mark.parametrize("examples", RUNS)
def test_duplicate_keys_are_rejected_never_last_one_wins(examples: int) -> None:
    fuzz(duplicate_key_payloads(), check_duplicate_keys, examples)()


# -- valid events round-trip exactly ----------------------------------------------------------


def check_valid(valid: Valid) -> None:
    payload = dumps(valid.data)
    event = outcome(payload)
    assert isinstance(event, OrderEvent), (event, valid.data)
    data = valid.data
    assert event.event_id == data["event_id"]
    assert event.order_id == data.get("order_id")
    assert event.lot_id == data["lot_id"]
    assert event.equipment_id == data.get("equipment_id")
    assert event.product_id == data.get("product_id")
    assert event.supersedes == data.get("supersedes")
    assert event.unit == data.get("unit", "piece")
    assert event.ts_ns == valid.ts_ns
    assert event.quantity_good == data.get("quantity_good")
    assert event.quantity_scrap == data.get("quantity_scrap")
    assert json.loads(event.raw_json) == data
    check_accepted(event, payload)
    # Written with raw UTF-8 instead of \\u escapes, it is the same event.
    again = outcome(dumps(data, ascii_only=False))
    assert isinstance(again, OrderEvent)
    assert replace(again, raw_json="") == replace(event, raw_json="")


@pytest.mark.parametrize("examples", RUNS)
def test_valid_events_round_trip_with_exact_identifiers(examples: int) -> None:
    fuzz(valid_events(), check_valid, examples)()


# -- near-valid events: one field mutated -----------------------------------------------------

ACCEPTED = "accepted"
EARLIEST = NOW - timedelta(seconds=LIMITS.ts_max_age_s)
LATEST = NOW + timedelta(seconds=LIMITS.ts_max_ahead_s)
US = timedelta(microseconds=1)


@dataclass(frozen=True)
class Mutant:
    data: dict[str, Any] | None  # None: ``raw`` is the payload
    expected: str  # a code, or ACCEPTED
    field: str | None  # the field the reason must name
    raw: bytes = b""
    ts_ns: int | None = None  # expected ts_ns when accepted

    def payload(self) -> bytes:
        return dumps(self.data) if self.data is not None else self.raw


def _required(data: dict[str, Any], name: str) -> bool:
    kind = data["type"]
    return (
        name in ("event_id", "type", "ts", "lot_id")
        or (name in ("order_id", "equipment_id") and kind != "lot_complete")
        or (name == "product_id" and kind == "start")
        or (name in ("quantity_good", "quantity_scrap") and kind == "stop")
    )


@st.composite
def mutants(draw: st.DrawFn) -> Mutant:
    valid = draw(valid_events())
    data = dict(valid.data)
    string_fields = [n for n in (*ID_FIELDS, *TEXT_FIELDS) if n in data]
    how = draw(
        st.sampled_from(
            [
                "whitespace",
                "too_long",
                "bad_char",
                "empty",
                "wrong_type",
                "null",
                "missing",
                "ts_edge",
                "ts_far",
                "ts_no_offset",
                "ts_not_rfc3339",
                "ts_same_instant",
                "quantity",
                "type",
                "unknown_equipment",
                "extra_fields",
                "supersedes_itself",
                "padding",
            ]
        )
    )
    if how == "whitespace":
        name = draw(st.sampled_from(string_fields))
        before, after = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
        value = data[name]
        data[name] = (
            (draw(whitespace) if before else "") + value + (draw(whitespace) if after else "")
        )
        return Mutant(data, "invalid_id", name)
    if how == "too_long":
        name = draw(st.sampled_from(string_fields))
        length = draw(st.one_of(st.integers(129, 2000), st.just(129), st.just(60_000)))
        data[name] = (data[name] * (length // len(data[name]) + 1))[:length].strip() + "x" * 129
        return Mutant(data, "invalid_id", name)
    if how == "bad_char":
        name = draw(st.sampled_from(string_fields))
        value = data[name]
        at = draw(st.integers(0, len(value)))
        data[name] = value[:at] + draw(bad_chars) + value[at:]
        return Mutant(data, "invalid_id", name)
    if how == "empty":
        name = draw(st.sampled_from(string_fields))
        data[name] = ""
        return Mutant(data, "invalid_id", name)
    if how == "wrong_type":
        name = draw(st.sampled_from(STRING_FIELDS))
        data[name] = draw(
            st.one_of(
                st.integers(),
                st.floats(allow_nan=False),
                st.booleans(),
                st.lists(st.text(), max_size=2),
                st.dictionaries(st.text(), st.integers(), max_size=2),
            )
        )
        return Mutant(data, "invalid_field", name)
    if how == "null":
        name = draw(st.sampled_from(sorted(KNOWN_FIELDS)))
        data[name] = None
        if name in ("supersedes",) or (not _required(data, name) and name != "unit"):
            return Mutant(data, ACCEPTED, None, ts_ns=valid.ts_ns)
        required_by_type = name in ("order_id", "equipment_id", "product_id") or name.startswith(
            "quantity"
        )
        return Mutant(data, "missing_field" if required_by_type else "invalid_field", name)
    if how == "missing":
        name = draw(st.sampled_from(sorted(KNOWN_FIELDS)))
        required = _required(data, name)
        data.pop(name, None)
        if required:
            return Mutant(data, "missing_field", name)
        return Mutant(data, ACCEPTED, None, ts_ns=valid.ts_ns)
    if how == "ts_edge":
        edge, step, inside = draw(
            st.sampled_from(
                [
                    (EARLIEST, -US, False),
                    (EARLIEST, 0 * US, True),
                    (LATEST, 0 * US, True),
                    (LATEST, US, False),
                ]
            )
        )
        moment = edge + step
        data["ts"] = moment.isoformat(timespec="microseconds")
        if not inside:
            return Mutant(data, "ts_out_of_range", "ts")
        ts_ns = NOW_NS + (moment - NOW) // US * 1000
        return Mutant(data, ACCEPTED, None, ts_ns=ts_ns)
    if how == "ts_far":
        data["ts"] = draw(
            st.sampled_from(
                [
                    "9999-12-31T23:59:59Z",
                    "9999-12-31T23:59:59.999999-14:00",
                    "0001-01-01T00:00:00+14:00",
                    "1970-01-01T00:00:00Z",
                    "2262-04-11T23:47:16.854775Z",
                    "2025-12-01T23:59:59.999999Z",
                    "2026-01-02T00:00:00.000001Z",
                ]
            )
        )
        return Mutant(data, "ts_out_of_range", "ts")
    if how == "ts_no_offset":
        text = data["ts"]
        cut = text.removesuffix("Z")[:19] if draw(st.booleans()) else text[:10]
        data["ts"] = (
            cut + draw(st.sampled_from(["", ".5", ".123456"]))[: 0 if len(cut) == 10 else None]
        )
        return Mutant(data, "invalid_field", "ts")
    if how == "ts_not_rfc3339":
        data["ts"] = draw(
            st.sampled_from(
                [
                    "1767225600",
                    "1767225600000",
                    "1767225600.5",
                    "20260101T000000Z",
                    "2026-1-1T00:00:00Z",
                    "2026-01-01T00:00Z",
                    "2026-01-01T24:00:00Z",
                    "2026-01-01T00:00:00Z\n",
                    "2026-01-01T00:00:00.Z",
                    "2026-W01-1",
                    "2026-01-01T00:00:00 +00:00",
                    "Thu, 01 Jan 2026 00:00:00 GMT",
                ]
            )
        )
        return Mutant(data, "invalid_field", "ts")
    if how == "ts_same_instant":
        moment = NOW + timedelta(microseconds=(valid.ts_ns - NOW_NS) // 1000)
        minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
        data["ts"] = moment.astimezone(timezone(timedelta(minutes=minutes))).isoformat()
        return Mutant(data, ACCEPTED, None, ts_ns=valid.ts_ns)
    if how == "quantity":
        name = draw(st.sampled_from(["quantity_good", "quantity_scrap"]))
        bad = draw(
            st.sampled_from(
                [
                    "-1",
                    "-0.001",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "1e400",
                    "1" + "0" * 400,
                    '"abc"',
                    '""',
                    '"5"',
                    '"1e3"',
                    "true",
                    "false",
                    "[]",
                    "{}",
                    "[5]",
                ]
            )
        )
        marker = '"@@quantity-under-test@@"'
        data[name] = json.loads(marker)
        raw = dumps(data).replace(marker.encode(), bad.encode(), 1)
        return Mutant(None, "invalid_field", name, raw=raw)
    if how == "type":
        data["type"] = draw(st.text(max_size=12).filter(lambda s: s not in EVENT_TYPES))
        return Mutant(data, "invalid_field", "type")
    if how == "unknown_equipment":
        data["equipment_id"] = draw(identifiers.filter(lambda s: s not in EQUIPMENT))
        return Mutant(data, "unknown_equipment", "equipment_id")
    if how == "extra_fields":
        count = draw(st.integers(0, 2 * LIMITS.max_extra_fields))
        known = {k: v for k, v in data.items() if k in KNOWN_FIELDS}
        data = {**known, **{f"x-{i}": i for i in range(count)}}
        if count > LIMITS.max_extra_fields:
            return Mutant(data, "too_many_fields", None)
        return Mutant(data, ACCEPTED, None, ts_ns=valid.ts_ns)
    if how == "supersedes_itself":
        data["supersedes"] = data["event_id"]
        return Mutant(data, "invalid_field", "supersedes")
    # padding: whitespace around and inside the JSON text is no change at all
    pad = draw(st.sampled_from([b" ", b"\n", b"\t", b"\r\n"]))
    raw = pad + json.dumps(data, indent=draw(st.integers(0, 3))).encode() + pad
    return Mutant(None, ACCEPTED, None, raw=raw, ts_ns=valid.ts_ns)


def check_mutant(mutant: Mutant) -> None:
    payload = mutant.payload()
    result = outcome(payload)
    if mutant.expected == ACCEPTED:
        assert isinstance(result, OrderEvent), (result, payload[:300])
        check_accepted(result, payload)
        assert result.ts_ns == mutant.ts_ns
        return
    if len(payload) > LIMITS.max_payload_bytes:
        assert isinstance(result, EventRejected)
        assert result.code == "payload_too_large"
        return
    assert isinstance(result, EventRejected), (mutant.expected, result, payload[:300])
    assert result.code == mutant.expected, (result.code, result.reason, payload[:300])
    if mutant.field is not None:
        assert mutant.field in result.reason, (mutant.field, result.reason)


@pytest.mark.parametrize("examples", RUNS)
def test_near_valid_events_are_rejected_with_the_field_named(examples: int) -> None:
    fuzz(mutants(), check_mutant, examples)()


def test_the_rejection_code_does_not_depend_on_the_ids() -> None:
    """Found by the long fuzz run (minimal form): the same mistake, two ids, two codes."""
    for event_id in ("e-1", "is required"):
        data = {
            "event_id": event_id,
            "type": "start",
            "ts": "2026-01-01T00:00:00Z",
            "order_id": "o-1",
            "lot_id": "lot-1",
            "equipment_id": "laser-01",
            "product_id": "P-1",
            "supersedes": event_id,
        }
        result = outcome(dumps(data))
        assert isinstance(result, EventRejected)
        assert result.code == "invalid_field", (event_id, result.code, result.reason)


# -- bounded parse time -----------------------------------------------------------------------


class _TooSlow(BaseException):
    """Raised by the CPU-time alarm; a BaseException so that parse_event cannot swallow it."""


def parse_cpu_s(payload: bytes, attempts: int = 3) -> float:
    """CPU seconds parse_event spends on ``payload``: the best of up to ``attempts`` runs while
    over budget, each capped at CUTOFF_S by an alarm.

    CPU time, not wall time: other processes share this machine's two cores; the garbage
    collector is paused, as its pauses belong to whoever allocated before.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _TooSlow

    best = math.inf
    for _ in range(attempts):
        previous = signal.signal(signal.SIGVTALRM, stop)
        gc.disable()
        started = time.thread_time()
        signal.setitimer(signal.ITIMER_VIRTUAL, CUTOFF_S)
        try:
            outcome(payload)
        except _TooSlow:
            pass
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            best = min(best, time.thread_time() - started)
            gc.enable()
            signal.signal(signal.SIGVTALRM, previous)
        if best < PARSE_BUDGET_S:
            break
    return best


# Short runs of the bytes a JSON scanner treats specially.
specials = st.lists(
    st.sampled_from([b'"', b"\\", b"[", b"{", b"a", b"u"]), min_size=1, max_size=6
).map(b"".join)


@st.composite
def largest_payloads(draw: st.DrawFn) -> bytes:
    """Payloads of exactly max_payload_bytes: a short JSON-ish pattern repeated (after an
    optional opening), or a valid event whose extra field fills the rest."""
    size = LIMITS.max_payload_bytes
    if draw(st.booleans()):
        data = draw(valid_events()).data
        piece = json.dumps(draw(st.text(min_size=1, max_size=6)))[1:-1]
        room = size - len(dumps({**data, "note": ""}))
        return with_note(data, room, piece)[:size]
    opening = draw(st.sampled_from([b"", b"[", b'{"a":"', b'{"event_id":', b'["', b"{" * 16]))
    chunk = draw(
        st.one_of(st.binary(min_size=1, max_size=8), json_ish_bytes.filter(bool), specials)
    )
    return (opening + chunk * (size // len(chunk) + 1))[:size]


def check_parse_time(payload: bytes) -> None:
    spent = parse_cpu_s(payload)
    assert spent < PARSE_BUDGET_S, f"{spent * 1000:.0f} ms CPU for {payload[:40]!r}..."


@pytest.mark.parametrize("examples", RUNS)
def test_largest_payload_parses_in_well_under_50_ms(examples: int) -> None:
    # The minimal failing case is checked first, so this fails fast while the bug is there.
    # No explain phase: it re-runs examples under a line tracer, which is what it would time.
    phases = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
    minimal = b'"\\' * (LIMITS.max_payload_bytes // 2)
    fuzz(largest_payloads(), check_parse_time, examples, explicit=[minimal], phases=phases)()


def test_unterminated_escaped_strings_do_not_stall_the_parser() -> None:
    payload = b'"\\' * (LIMITS.max_payload_bytes // 2)  # "\"\"\"\ ... : never closed
    assert len(payload) == LIMITS.max_payload_bytes
    spent = parse_cpu_s(payload, attempts=1)
    assert spent < PARSE_BUDGET_S, f"{spent * 1000:.0f} ms CPU (cut off at {CUTOFF_S * 1000:.0f})"


def test_ordinary_largest_payloads_parse_fast() -> None:
    """The budget itself is realistic: the biggest valid event and the biggest junk are cheap."""
    base = {
        "event_id": "e-1",
        "type": "start",
        "ts": "2026-01-01T00:00:00Z",
        "order_id": "o-1",
        "lot_id": "lot-1",
        "equipment_id": "laser-01",
        "product_id": "P-1",
    }
    room = LIMITS.max_payload_bytes - len(dumps({**base, "note": ""}))
    valid = with_note(base, room - room % 3, '\\"x')
    junk = b"[" * 16 + b'"' * (LIMITS.max_payload_bytes - 16)
    for payload in (valid, junk):
        assert len(payload) <= LIMITS.max_payload_bytes
        assert parse_cpu_s(payload) < PARSE_BUDGET_S
    assert isinstance(outcome(valid), OrderEvent)


# -- nesting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="lists"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="objects"),
        pytest.param(b"[" * 100_000, id="unclosed"),
        pytest.param(b'[{"s":"]}"},' * 50_000 + b"0" + b"]" * 50_000, id="brackets-in-strings"),
    ],
)
@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(MesConfig(max_payload_bytes=16 * 1024 * 1024), id="size-allowed"),
        pytest.param(None, id="no-limits"),  # re-reading a stored event: json.loads' own guard
    ],
)
def test_100000_levels_deep_is_too_deep_not_a_recursion_error(
    payload: bytes, limits: MesConfig | None
) -> None:
    result = outcome(payload, limits=limits)
    assert isinstance(result, EventRejected)
    assert result.code == "too_deep", result.reason


def test_100000_levels_deep_within_default_limits_is_rejected_by_size_first() -> None:
    result = outcome(b"[" * 100_000 + b"]" * 100_000)
    assert isinstance(result, EventRejected)
    assert result.code == "payload_too_large"


@pytest.mark.parametrize("levels", [15, 16, 17])
def test_depth_limit_is_exact(levels: int) -> None:
    data = {
        "event_id": "e-1",
        "type": "start",
        "ts": "2026-01-01T00:00:00Z",
        "order_id": "o-1",
        "lot_id": "lot-1",
        "equipment_id": "laser-01",
        "product_id": "P-1",
    }
    nested: Any = 0
    for _ in range(levels - 1):  # the event object itself is the first level
        nested = [nested]
    result = outcome(dumps({**data, "extra": nested}))
    if levels <= LIMITS.max_json_depth:
        assert isinstance(result, OrderEvent)
    else:
        assert isinstance(result, EventRejected)
        assert result.code == "too_deep"


# -- the RFC 3339 contract --------------------------------------------------------------------


@pytest.mark.parametrize("ts", ["1767225600", "1767225600000", "1767225600.5"])
def test_ts_as_a_number_in_a_string_is_rejected(ts: str) -> None:
    data = {
        "event_id": "e-1",
        "type": "start",
        "ts": ts,
        "order_id": "o-1",
        "lot_id": "lot-1",
        "equipment_id": "laser-01",
        "product_id": "P-1",
    }
    result = outcome(dumps(data))
    assert isinstance(result, EventRejected), result
    assert result.code == "invalid_field"
    assert "ts" in result.reason
