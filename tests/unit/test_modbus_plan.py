from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config.models import REGISTER_COUNT, ModbusPoint
from edge_agent.sources.modbus.plan import MAX_BITS_PER_READ, extract, plan_reads


def p(address: int, type_: str = "float32", register: str = "input") -> ModbusPoint:
    return ModbusPoint.model_validate({"register": register, "address": address, "type": type_})


def spans(points: dict[str, ModbusPoint], gap: int, limit: int = 125) -> list[tuple[int, int]]:
    return [(b.start, b.count) for b in plan_reads(points, gap, limit)]


def test_contiguous_points_are_one_request() -> None:
    blocks = plan_reads(
        {"a": p(0), "b": p(2), "c": p(4)}, max_gap_registers=0, max_registers_per_read=125
    )
    assert [(b.register_type, b.start, b.count) for b in blocks] == [("input", 0, 6)]
    assert blocks[0].members == (("a", 0, 2), ("b", 2, 2), ("c", 4, 2))


def test_gap_merging_respects_the_configured_gap() -> None:
    # SDM630 layout: voltage 0, power 52, energy 72 (gaps of 50 and 18 registers).
    points = {"v": p(0), "power": p(52), "energy": p(72)}
    assert spans(points, gap=8) == [(0, 2), (52, 2), (72, 2)]
    assert spans(points, gap=17) == [(0, 2), (52, 2), (72, 2)]
    assert spans(points, gap=18) == [(0, 2), (52, 22)]  # a gap equal to the limit merges
    assert spans(points, gap=49) == [(0, 2), (52, 22)]
    assert spans(points, gap=50) == [(0, 74)]


def test_request_size_cap_never_splits_a_point() -> None:
    points = {f"p{i}": p(i * 2) for i in range(100)}  # 200 registers of float32
    blocks = plan_reads(points, max_gap_registers=0, max_registers_per_read=125)
    # 125 would cut p62 (registers 124, 125) in two: the first request stops at 124.
    assert [(b.start, b.count) for b in blocks] == [(0, 124), (124, 76)]
    assert sum(len(b.members) for b in blocks) == 100


def test_a_smaller_per_read_limit_for_fussy_meters() -> None:
    points = {"a": p(0, "float64"), "b": p(4, "float64"), "c": p(8, "uint16")}
    assert spans(points, gap=0, limit=8) == [(0, 8), (8, 1)]
    assert spans(points, gap=0, limit=4) == [(0, 4), (4, 4), (8, 1)]


def test_tables_are_planned_separately() -> None:
    points = {
        "h": p(0, "uint16", "holding"),
        "i": p(0, "uint16", "input"),
        "c": p(0, "uint16", "coil"),
        "d": p(1, "uint16", "discrete_input"),
    }
    blocks = plan_reads(points, 8, 125)
    assert sorted((b.register_type, b.start, b.count) for b in blocks) == [
        ("coil", 0, 1),
        ("discrete_input", 1, 1),
        ("holding", 0, 1),
        ("input", 0, 1),
    ]


def test_coils_merge_up_to_2000_bits() -> None:
    # A coil is one bit whatever its "type"; the 125-register cap does not apply to bits.
    coils = {f"c{i}": p(i * 10, "uint16", "coil") for i in range(300)}  # 0 .. 2990
    blocks = plan_reads(coils, max_gap_registers=9, max_registers_per_read=125)
    assert [(b.start, b.count) for b in blocks] == [(0, 1991), (2000, 991)]
    assert all(b.is_bits for b in blocks)
    assert MAX_BITS_PER_READ == 2000


def test_overlapping_points_share_a_request() -> None:
    # One register read two ways (a raw counter and the same value as a float): one request.
    points = {"raw": p(10, "uint32", "holding"), "value": p(10, "float32", "holding")}
    (block,) = plan_reads(points, 0, 125)
    assert (block.start, block.count) == (10, 2)
    assert extract(block, [0x449A, 0x5000]) == {"raw": [0x449A, 0x5000], "value": [0x449A, 0x5000]}


def test_extract_slices_each_point() -> None:
    points = {"a": p(10, "uint16"), "b": p(12, "uint32")}
    (block,) = plan_reads(points, 8, 125)
    assert extract(block, [1, 2, 3, 4]) == {"a": [1], "b": [3, 4]}


def test_extract_bits() -> None:
    points = {"run": p(3, "uint16", "coil"), "fault": p(6, "uint16", "coil")}
    (block,) = plan_reads(points, 8, 125)
    bits = [True, False, False, True]
    assert extract(block, bits) == {"run": [1], "fault": [1]}


TABLES = st.sampled_from(["holding", "input", "coil"])
TYPES = st.sampled_from(sorted(REGISTER_COUNT))


@given(
    # Addresses on a grid of 4 (the widest type) so that points never overlap each other.
    specs=st.lists(
        st.tuples(TABLES, st.integers(0, 750).map(lambda slot: slot * 4), TYPES),
        min_size=1,
        max_size=60,
        unique_by=lambda spec: (spec[0], spec[1]),
    ),
    gap=st.integers(0, 124),
    limit=st.integers(4, 125),
)
def test_plan_properties(specs: list[tuple[str, int, str]], gap: int, limit: int) -> None:
    points = {f"p{i}": p(address, type_, table) for i, (table, address, type_) in enumerate(specs)}
    blocks = plan_reads(points, gap, limit)
    seen: dict[str, int] = {}
    for block in blocks:
        cap = MAX_BITS_PER_READ if block.is_bits else limit
        assert 1 <= block.count <= cap
        for name, offset, length in block.members:
            point = points[name]
            assert block.register_type == point.register_type
            assert block.start + offset == point.address
            assert length == point.register_count
            assert offset + length <= block.count  # the whole point is inside one request
            seen[name] = seen.get(name, 0) + 1
    assert seen == dict.fromkeys(points, 1)  # every point read exactly once
    by_table: dict[str, list[tuple[int, int]]] = {}
    for block in blocks:
        by_table.setdefault(block.register_type, []).append((block.start, block.count))
    for table_blocks in by_table.values():
        ordered = sorted(table_blocks)
        for (start_a, count_a), (start_b, _) in itertools.pairwise(ordered):
            assert start_a + count_a <= start_b  # no register read twice
