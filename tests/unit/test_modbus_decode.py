"""Decoding against hand-written byte patterns (never produced by our own encoder)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config.models import REGISTER_COUNT, ModbusPoint
from edge_agent.errors import DecodeError
from edge_agent.sources.modbus.decode import decode_bits, decode_registers, encode_value


def point(type_: str, word: str = "big", byte: str = "big", **extra: object) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"address": 0, "type": type_, "word_order": word, "byte_order": byte, **extra}
    )


# Every data type x word order x byte order, written by hand from the value's big-endian bytes
# (never produced by encode_value). Names in other tools: ABCD = big/big, CDAB = word little,
# BADC = byte little, DCBA = both little.
#   uint16 0x1234; int16 -2 = FF FE; uint32 123456789 = 07 5B CD 15;
#   int32 -123456789 = F8 A4 32 EB; float32 1234.5 = 44 9A 50 00;
#   uint64 0x0012345678ABCDEF = 00 12 34 56 78 AB CD EF (below 2**53, exact as a float); int64 -1234567890123 = FF FF FE E0 8E 04 FB 35;
#   float64 pi = 40 09 21 FB 54 44 2D 18.
PI = 3.141592653589793
U64 = 0x0012345678ABCDEF
CASES = [
    ("uint16", "big", "big", [0x1234], 0x1234),
    ("uint16", "little", "big", [0x1234], 0x1234),  # one word: word order does not apply
    ("uint16", "big", "little", [0x3412], 0x1234),
    ("uint16", "little", "little", [0x3412], 0x1234),
    ("int16", "big", "big", [0xFFFE], -2),
    ("int16", "little", "big", [0xFFFE], -2),
    ("int16", "big", "little", [0xFEFF], -2),
    ("int16", "little", "little", [0xFEFF], -2),
    ("uint32", "big", "big", [0x075B, 0xCD15], 123456789),  # ABCD
    ("uint32", "little", "big", [0xCD15, 0x075B], 123456789),  # CDAB
    ("uint32", "big", "little", [0x5B07, 0x15CD], 123456789),  # BADC
    ("uint32", "little", "little", [0x15CD, 0x5B07], 123456789),  # DCBA
    ("int32", "big", "big", [0xF8A4, 0x32EB], -123456789),
    ("int32", "little", "big", [0x32EB, 0xF8A4], -123456789),
    ("int32", "big", "little", [0xA4F8, 0xEB32], -123456789),
    ("int32", "little", "little", [0xEB32, 0xA4F8], -123456789),
    ("float32", "big", "big", [0x449A, 0x5000], 1234.5),
    ("float32", "little", "big", [0x5000, 0x449A], 1234.5),
    ("float32", "big", "little", [0x9A44, 0x0050], 1234.5),
    ("float32", "little", "little", [0x0050, 0x9A44], 1234.5),
    ("uint64", "big", "big", [0x0012, 0x3456, 0x78AB, 0xCDEF], U64),
    ("uint64", "little", "big", [0xCDEF, 0x78AB, 0x3456, 0x0012], U64),
    ("uint64", "big", "little", [0x1200, 0x5634, 0xAB78, 0xEFCD], U64),
    ("uint64", "little", "little", [0xEFCD, 0xAB78, 0x5634, 0x1200], U64),
    ("int64", "big", "big", [0xFFFF, 0xFEE0, 0x8E04, 0xFB35], -1234567890123),
    ("int64", "little", "big", [0xFB35, 0x8E04, 0xFEE0, 0xFFFF], -1234567890123),
    ("int64", "big", "little", [0xFFFF, 0xE0FE, 0x048E, 0x35FB], -1234567890123),
    ("int64", "little", "little", [0x35FB, 0x048E, 0xE0FE, 0xFFFF], -1234567890123),
    ("float64", "big", "big", [0x4009, 0x21FB, 0x5444, 0x2D18], PI),
    ("float64", "little", "big", [0x2D18, 0x5444, 0x21FB, 0x4009], PI),
    ("float64", "big", "little", [0x0940, 0xFB21, 0x4454, 0x182D], PI),
    ("float64", "little", "little", [0x182D, 0x4454, 0xFB21, 0x0940], PI),
]


def test_cases_cover_every_type_and_order() -> None:
    covered = {(type_, word, byte) for type_, word, byte, _, _ in CASES}
    assert covered == {
        (type_, word, byte)
        for type_ in REGISTER_COUNT
        for word in ("big", "little")
        for byte in ("big", "little")
    }


@pytest.mark.parametrize(("type_", "word", "byte", "words", "expected"), CASES)
def test_known_patterns(
    type_: str, word: str, byte: str, words: list[int], expected: float
) -> None:
    assert decode_registers(words, point(type_, word, byte)) == expected
    assert encode_value(expected, point(type_, word, byte)) == words


def test_modbus_specification_example() -> None:
    """Modbus Application Protocol V1.1b3 §6.3: register 108 holds 02 2B hex = 555 decimal;
    registers 109-110 hold 00 00 and 00 64 hex (100 as a 32-bit value, high word first)."""
    assert decode_registers([0x022B], point("uint16")) == 555
    assert decode_registers([0x0000, 0x0064], point("uint32")) == 100


def test_makers_documented_float_examples() -> None:
    """Eastron, "SDM630 Modbus Protocol", section on IEEE 754 floats: 240.5 is 43 70 80 00 hex,
    high register first. Electro Industries/GaugeTech, "Shark 100 Meter Modbus Map" (Doc#
    E145701), appendix B.4: C4E11DB9 hex is -1800.929, the lower-addressed register the high half.
    GE "EPM 4500 instruction manual" §4.1.7 sends floats low word first: word_order little."""
    assert decode_registers([0x4370, 0x8000], point("float32")) == 240.5
    assert decode_registers([0xC4E1, 0x1DB9], point("float32")) == pytest.approx(
        -1800.929, abs=1e-3
    )
    assert decode_registers([0x1DB9, 0xC4E1], point("float32", "little")) == pytest.approx(
        -1800.929, abs=1e-3
    )


def test_scale_and_offset() -> None:
    # A 16-bit 0.1 kWh counter reading 0x1388 (5000) is 500.0 kWh.
    assert decode_registers([0x1388], point("uint16", scale=0.1, unit="kWh")) == pytest.approx(
        500.0
    )
    assert decode_registers([0x0064], point("int16", scale=0.5, offset=-10)) == 40.0


def test_nan_and_infinity_are_rejected_with_the_words() -> None:
    with pytest.raises(DecodeError, match="0x7FC0 0x0000"):
        decode_registers([0x7FC0, 0x0000], point("float32"))
    with pytest.raises(DecodeError, match="not a number"):
        decode_registers([0x7FF0, 0, 0, 0], point("float64"))


def test_wrong_length_and_out_of_range_words() -> None:
    with pytest.raises(DecodeError, match="needs 2 registers, got 1"):
        decode_registers([1], point("uint32"))
    with pytest.raises(DecodeError, match="16-bit range"):
        decode_registers([70000], point("uint16"))


def test_integer_that_does_not_fit_cannot_be_encoded() -> None:
    with pytest.raises(DecodeError, match="does not fit"):
        encode_value(70000, point("uint16"))


def test_bits() -> None:
    coil = ModbusPoint.model_validate({"register": "coil", "address": 3})
    assert decode_bits([True], coil) == 1.0
    assert decode_bits([False], coil) == 0.0


ORDERS = st.sampled_from(["big", "little"])


@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False), word=ORDERS, byte=ORDERS)
def test_float32_round_trip(value: float, word: str, byte: str) -> None:
    p = point("float32", word, byte)
    assert decode_registers(encode_value(value, p), p) == value


@given(value=st.integers(-(2**63), 2**63 - 1), word=ORDERS, byte=ORDERS)
def test_int64_round_trip(value: int, word: str, byte: str) -> None:
    p = point("int64", word, byte)
    decoded = decode_registers(encode_value(value, p), p)
    assert decoded == float(value)


@given(value=st.floats(allow_nan=False, allow_infinity=False), word=ORDERS, byte=ORDERS)
def test_float64_round_trip_matches_struct(value: float, word: str, byte: str) -> None:
    p = point("float64", word, byte)
    words = encode_value(value, p)
    big = struct.unpack(">d", struct.pack(">d", value))[0]
    assert math.isclose(decode_registers(words, p), big, rel_tol=0, abs_tol=0)


def test_encode_rounds_integers_and_rejects_out_of_range() -> None:
    counter = point("uint16", scale=0.1, unit="kWh")
    assert encode_value(12.34, counter) == [123]  # 123.4 counts -> 123
    assert encode_value(12.36, counter) == [124]
    with pytest.raises(DecodeError, match="does not fit"):
        encode_value(-0.1, counter)  # negative into an unsigned register
    with pytest.raises(DecodeError, match="does not fit"):
        encode_value(2**31, point("int32"))
    assert encode_value(2**31 - 1, point("int32")) == [0x7FFF, 0xFFFF]


@given(raw=st.integers(-(2**31), 2**31 - 1), word=ORDERS, byte=ORDERS)
def test_scaled_int32_round_trip(raw: int, word: str, byte: str) -> None:
    """EM24-style weights: value = raw x 0.1; encoding the decoded value gives the raw back."""
    p = point("int32", word, byte, scale=0.1)
    words = encode_value(raw * 0.1, p)
    assert decode_registers(words, p) == raw * 0.1


def test_encode_rejects_what_the_register_cannot_hold() -> None:
    with pytest.raises(DecodeError, match="does not fit float32"):
        encode_value(1e40, point("float32"))
    with pytest.raises(DecodeError, match="not a finite number"):
        encode_value(math.inf, point("int32"))
    # A float register may carry NaN on purpose (a simulator showing a faulty meter).
    assert math.isnan(
        struct.unpack(">f", struct.pack(">HH", *encode_value(math.nan, point("float32"))))[0]
    )
