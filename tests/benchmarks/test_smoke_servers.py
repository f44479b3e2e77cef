"""Quick runs of the servers benchmarks (see tests/benchmarks/smoke.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.smoke import run_quick


@pytest.mark.parametrize("name", ["store", "opcua", "hub", "hub_store"])
def test_quick_run_measures_agent_and_baseline(name: str, tmp_path: Path) -> None:
    run_quick(name, tmp_path)
