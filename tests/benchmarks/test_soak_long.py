"""The one-hour memory soak at 1,000 meters (issue 12): the agent's RSS may grow by at most
5 % after its warm-up. Marked long: `pytest -m long tests/benchmarks/test_soak_long.py`; CI runs
the short soak (tests/integration/test_bench_poller_smoke.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.long
@pytest.mark.timeout(5400)
def test_an_hour_at_1000_meters_grows_rss_by_at_most_5_percent(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_poller.py"), "--soak", "3600",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=5000, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (row,) = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert row["met"] is True, row
