"""Register words <-> values (pure).

``word_order`` is the order of the 16-bit words of a 32/64-bit value, ``byte_order`` the order of
the two bytes inside each word. For a float32 whose big-endian bytes are A B C D, the names other
tools use (Telegraf's FLOAT32 naming confusion, influxdata/telegraf#7518, #8855) map as:

    ABCD  word_order=big     byte_order=big      (Modbus standard; Eastron, Schneider)
    CDAB  word_order=little  byte_order=big      (word swap; Carlo Gavazzi INT32 "LSW first")
    BADC  word_order=big     byte_order=little   (byte swap)
    DCBA  word_order=little  byte_order=little   (fully little-endian)

16-bit types have one word, so only ``byte_order`` applies to them. 64-bit types follow the same
rule with four words (``word_order=little``: least significant word first). Values come back
as ``float``: 64-bit integers above 2**53 lose their last digits (2**53 Wh is 9e9 MWh, beyond
any real counter).

Errors are :class:`~edge_agent.errors.DecodeError` naming the type, both orders and the raw
words, so a wrong ``word_order`` in the config is visible in the probe output.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.config.models import ORDER_SHORTHAND, REGISTER_COUNT, ModbusPoint
from edge_agent.errors import DecodeError

__all__ = ["OrderDecoding", "decode_bits", "decode_every_order", "decode_registers", "encode_value"]

_STRUCT = {
    "uint16": "H", "int16": "h", "uint32": "I", "int32": "i",
    "uint64": "Q", "int64": "q", "float32": "f", "float64": "d",
}  # fmt: skip


def _describe(point: ModbusPoint) -> str:
    return f"{point.type} (word_order={point.word_order}, byte_order={point.byte_order})"


def _to_big_endian_bytes(words: Sequence[int], point: ModbusPoint) -> bytes:
    ordered = list(words) if point.word_order == "big" else list(reversed(words))
    out = bytearray()
    for word in ordered:
        high, low = (word >> 8) & 0xFF, word & 0xFF
        out += bytes((high, low)) if point.byte_order == "big" else bytes((low, high))
    return bytes(out)


def _from_big_endian_bytes(data: bytes, point: ModbusPoint) -> list[int]:
    words = []
    for index in range(0, len(data), 2):
        first, second = data[index], data[index + 1]
        words.append((first << 8 | second) if point.byte_order == "big" else (second << 8 | first))
    return words if point.word_order == "big" else list(reversed(words))


def decode_registers(registers: Sequence[int], point: ModbusPoint) -> float:
    """Raw register words (as read, in address order) -> value in ``point.unit``."""
    expected = REGISTER_COUNT[point.type]
    if len(registers) != expected:
        raise DecodeError(
            f"{_describe(point)} needs {expected} registers, got {len(registers)}: {list(registers)}"
        )
    if any(not 0 <= word <= 0xFFFF for word in registers):
        raise DecodeError(
            f"{_describe(point)}: register words out of 16-bit range: {list(registers)}"
        )
    raw = struct.unpack(">" + _STRUCT[point.type], _to_big_endian_bytes(registers, point))[0]
    if isinstance(raw, float) and not math.isfinite(raw):
        words = " ".join(f"0x{word:04X}" for word in registers)
        raise DecodeError(f"{_describe(point)} words {words} decode to {raw} (not a number)")
    return float(raw) * point.scale + point.offset


def encode_value(value: float, point: ModbusPoint) -> list[int]:
    """Inverse of :func:`decode_registers` (simulators and tests): value in ``point.unit`` -> words."""
    exact = isinstance(value, int) and point.scale == 1 and point.offset == 0
    raw = value if exact else (value - point.offset) / point.scale
    code = _STRUCT[point.type]
    if point.type.startswith("float"):
        try:
            data = struct.pack(">" + code, raw)
        except OverflowError as exc:  # beyond float32's range (about 3.4e38)
            raise DecodeError(f"{value} does not fit {_describe(point)}") from exc
        return _from_big_endian_bytes(data, point)
    if not math.isfinite(raw):
        raise DecodeError(f"{value} does not fit {_describe(point)} (not a finite number)")
    integer = round(raw)
    try:
        data = struct.pack(">" + code, integer)
    except struct.error as exc:
        raise DecodeError(f"{value} does not fit {_describe(point)} (raw {integer})") from exc
    return _from_big_endian_bytes(data, point)


def decode_bits(bits: Sequence[bool], point: ModbusPoint) -> float:
    """A coil or discrete input -> 0.0/1.0 (scale and offset applied)."""
    if len(bits) != 1:
        raise DecodeError(f"a {point.register_type} point reads 1 bit, got {len(bits)}")
    return (1.0 if bits[0] else 0.0) * point.scale + point.offset


@dataclass(frozen=True, slots=True)
class OrderDecoding:
    """The value the same register words give under one word/byte order (the probe)."""

    order: str  # ABCD, CDAB, BADC or DCBA
    value: float | None  # in the point's unit, scale and offset applied; None: error
    error: str  # why there is no value (NaN/inf), else ""
    configured: bool  # the point's own order


def decode_every_order(registers: Sequence[int], point: ModbusPoint) -> tuple[OrderDecoding, ...]:
    """``registers`` decoded under each of the four word/byte orders, with
    :func:`decode_registers` (so the configured one is exactly what polling produces)."""
    out = []
    for name, (word_order, byte_order) in ORDER_SHORTHAND.items():
        variant = point.model_copy(update={"word_order": word_order, "byte_order": byte_order})
        try:
            value: float | None = decode_registers(registers, variant)
            error = ""
        except DecodeError as exc:
            value, error = None, str(exc)
        out.append(OrderDecoding(name, value, error, name == point.order))
    return tuple(out)
