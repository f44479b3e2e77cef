"""Quick runs of the publishing benchmarks (see tests/benchmarks/smoke.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.smoke import run_quick


@pytest.mark.parametrize("name", ["outbox", "end_to_end", "intake"])
def test_quick_run_measures_agent_and_baseline(name: str, tmp_path: Path) -> None:
    run_quick(name, tmp_path)
