"""release_free_heap gives a thread's freed C-heap memory back to the system (glibc only)."""

from __future__ import annotations

import ctypes
import re
import sys
import threading
from pathlib import Path

import pytest

from edge_agent import heap
from edge_agent.heap import release_free_heap


def _anonymous_kb() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"RssAnon:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).malloc_trim  # noqa: B018 (probing for the symbol)
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="glibc only")
def test_memory_freed_in_a_worker_thread_goes_back_to_the_system() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    levels: dict[str, int] = {}

    def burst() -> None:  # as SQLite's work in aiosqlite's thread: that thread's arena
        chunks = [libc.malloc(32 * 1024) for _ in range(2_000)]  # 64 MB, below mmap's size
        for chunk in chunks:
            ctypes.memset(chunk, 1, 32 * 1024)
        levels["peak"] = _anonymous_kb()
        for chunk in chunks[:-1]:  # the last one pins the arena's top: no trim on free
            libc.free(chunk)
        levels["freed"] = _anonymous_kb()
        assert release_free_heap() is True
        levels["released"] = _anonymous_kb()
        libc.free(chunks[-1])

    worker = threading.Thread(target=burst)
    worker.start()
    worker.join()
    assert levels["freed"] - levels["released"] > 48 * 1024, levels  # most of the 64 MB


def test_unsupported_platforms_say_so_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert release_free_heap() is None
