"""Sets of sequence numbers as sorted, disjoint, non-adjacent ranges ``(first, last)``.

A gateway's records carry its outbox sequence number; the hub stores which numbers it holds as
ranges (one row per range, merged on insert), so "what is missing" is the gaps between
consecutive ranges whatever the number of records.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

Range = tuple[int, int]


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """The union of ``ranges`` as sorted, disjoint ranges; touching ranges are joined."""
    merged: list[Range] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def ranges_of(numbers: Iterable[int]) -> list[Range]:
    """The ranges of a set of numbers: {1, 2, 3, 7} -> [(1, 3), (7, 7)]."""
    return merge_ranges((n, n) for n in numbers)


def holes(ranges: Sequence[Range]) -> tuple[Range, ...]:
    """The gaps between consecutive sorted, disjoint ranges (inclusive bounds)."""
    return tuple(
        (before[1] + 1, after[0] - 1)
        for before, after in pairwise(ranges)
        if after[0] > before[1] + 1
    )
