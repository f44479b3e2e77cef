"""`edge-agent run` starts with the garbage collector off and always turns it back on."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from edge_agent.app import end_startup_gc_pause
from edge_agent.cli import EXIT_CONFIG, main


def test_a_run_that_cannot_start_leaves_the_collector_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gc.isenabled()
    assert main(["run", "-c", str(tmp_path / "missing.yaml")]) == EXIT_CONFIG
    assert gc.isenabled()
    assert "missing.yaml" in capsys.readouterr().err


def test_the_pause_ends_with_start_up_objects_frozen() -> None:
    gc.disable()
    try:
        start_up = [object() for _ in range(1000)]
        frozen_before = gc.get_freeze_count()
        end_startup_gc_pause()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(start_up)
    finally:
        gc.unfreeze()
        gc.enable()
    end_startup_gc_pause()  # with the collector on: nothing to do
    assert gc.isenabled()
