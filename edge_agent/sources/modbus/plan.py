"""Which Modbus requests to send for a meter's points (pure).

Points in one register table are merged into as few requests as possible: neighbours join a
block when the registers between them (read and discarded) are at most ``max_gap_registers`` and
the block stays within the per-request limit (125 registers, 2000 bits — Modbus spec §6.3/§6.1).
A point never straddles two requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_agent.config.models import ModbusPoint

MAX_BITS_PER_READ = 2000


@dataclass(frozen=True, slots=True)
class ReadBlock:
    register_type: str
    start: int
    count: int
    members: tuple[tuple[str, int, int], ...]  # (point name, offset in block, length)

    @property
    def is_bits(self) -> bool:
        return self.register_type in ("coil", "discrete_input")


def plan_reads(
    points: Mapping[str, ModbusPoint], max_gap_registers: int, max_registers_per_read: int
) -> list[ReadBlock]:
    by_table: dict[str, list[tuple[int, int, str]]] = {}
    for name, point in points.items():
        by_table.setdefault(point.register_type, []).append(
            (point.address, point.register_count, name)
        )
    blocks: list[ReadBlock] = []
    for table in sorted(by_table):
        limit = MAX_BITS_PER_READ if table in ("coil", "discrete_input") else max_registers_per_read
        current: list[tuple[int, int, str]] = []
        for address, count, name in sorted(by_table[table]):
            if current:
                start = current[0][0]
                end = max(a + c for a, c, _ in current)
                fits = address + count - start <= limit
                near = address - end <= max_gap_registers
                if not (fits and near):
                    blocks.append(_block(table, current))
                    current = []
            current.append((address, count, name))
        if current:
            blocks.append(_block(table, current))
    return blocks


def _block(table: str, members: Sequence[tuple[int, int, str]]) -> ReadBlock:
    start = members[0][0]
    end = max(address + count for address, count, _ in members)
    return ReadBlock(
        register_type=table,
        start=start,
        count=end - start,
        members=tuple((name, address - start, count) for address, count, name in members),
    )


def extract(block: ReadBlock, values: Sequence[int] | Sequence[bool]) -> dict[str, list[int]]:
    """Split a block's response into each point's words (or bits)."""
    return {
        name: [int(v) for v in values[offset : offset + length]]
        for name, offset, length in block.members
    }
