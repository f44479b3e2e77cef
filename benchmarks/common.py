"""What every benchmark script shares: free ports, CPU clocks and the result file's shape.

Each script writes, with ``--json PATH``, one result that ``benchmarks/run_all.py`` gathers into
docs/performance.md and ``benchmarks/results/latest.json``::

    {"benchmark": name, "title": ..., "command": the command line, "rows": [
        {"figure", "agent", "baseline", "unit", "ratio", "goal", "met"}, ...],
     "details": {...}}
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any


def consecutive_free_ports(count: int, start: int = 15000) -> int:
    """A run of free ports below the kernel's ephemeral range (32768+), so none is taken."""
    base = start
    while base + count < 32000:
        taken = False
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    base = port + 1
                    break
        if not taken:
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def write_result(
    path: Path | None,
    *,
    benchmark: str,
    title: str,
    rows: list[dict[str, Any]],
    details: dict[str, Any],
) -> None:
    """Write one benchmark's result in the shape run_all.py reads (nothing when path is None)."""
    if path is None:
        return
    result = {
        "benchmark": benchmark,
        "title": title,
        "command": " ".join(["python", *sys.argv]),
        "rows": rows,
        "details": details,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
