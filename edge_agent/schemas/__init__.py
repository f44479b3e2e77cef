"""JSON Schemas of what edge-agent reads and publishes (draft 2020-12).

``config.schema.json`` and ``mes-event.schema.json`` are generated from the code by
``python -m edge_agent.schemas.generate``; ``lot-record``, ``energy-balance`` and
``footprint-steps`` (the data block of the footprints' per-step extension, docs/carbon.md) are
written by hand. :func:`schema_path` finds a shipped file.
"""

from __future__ import annotations

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent


def schema_path(name: str) -> Path:
    """The shipped schema file ``name`` (e.g. ``"config"`` for ``config.schema.json``)."""
    return SCHEMA_DIR / f"{name}.schema.json"
