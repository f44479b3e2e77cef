"""The polling benchmark's short memory soak still runs and writes its JSON row (no timing is
asserted: figures come from the benchmark itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_writes_the_benchmark_contract(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_poller.py"), "--quick",
         "--soak", "8", "--soak-every", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["benchmark"] == "poller_soak"
    assert "--soak 8" in report["command"]
    (row,) = report["rows"]
    assert set(row) == {"figure", "agent", "baseline", "unit", "ratio", "goal", "met"}
    assert row["unit"] == "%"
    soak = report["details"]["soak"]
    assert len(soak["rss_samples_mb"]) >= 3
    # the store's size with every reading but the last: a step at the disk budget shows
    assert len(soak["database_mb"]) == len(soak["rss_samples_mb"]) - 1
    assert soak["database_mb"][-1][1] > 0
    assert soak["agent"]["reads"] > 0  # the server counted the agent's reads
