"""Giving the C heap's free memory back to the system after a burst (glibc's ``malloc_trim``).

SQLite runs in aiosqlite's worker thread, so its memory comes from that thread's glibc arena.
A burst there — the first disk-budget pruning of a full store while sample writes queue up —
leaves free chunks the arena keeps for ever: the hour-long soak's RSS stepped up once and
stayed, memory the process no longer used. ``malloc_trim(0)`` hands whole free pages of every
arena back to the kernel. Where there is no glibc (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

from edge_agent.libc import libc_function


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    function: Callable[[int], int] | None = libc_function(
        "malloc_trim", [ctypes.c_size_t], ctypes.c_int
    )
    return function


def release_free_heap() -> bool | None:
    """Return free C-heap pages to the system; True if some were, None where unsupported."""
    trim = _malloc_trim()
    if trim is None:
        return None
    return bool(trim(0))
