"""Each benchmark's --quick run through benchmarks/run_all.py, so none can rot (CI runs them in
the test suite). No figure is asserted: figures come from the benchmarks themselves; what is
checked is that the agent and its baseline both ran and the result has the runner's shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {"figure", "agent", "baseline", "unit", "ratio", "goal", "met"}


def run_quick(name: str, results: Path, timeout_s: float = 240.0) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only", name,
         "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    combined = json.loads((results / "quick.json").read_text(encoding="utf-8"))
    assert combined["quick"] is True
    (result,) = combined["results"]
    assert result["failure"] is None, result
    rows = result["rows"]
    assert rows, result
    for row in rows:
        assert set(row) >= ROW_KEYS, row
        assert isinstance(row["agent"], int | float), row
        assert row["agent"] >= 0, row  # a count (of failures, say) may be 0
        if row["baseline"] is not None:
            assert row["baseline"] > 0, row
    assert any(row["agent"] > 0 for row in rows), rows  # something was measured
    return dict(result)
