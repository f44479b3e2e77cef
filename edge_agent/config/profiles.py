"""Reusable register maps of real meters (``edge_agent/profiles/<name>.yaml``, shipped in the wheel).

A profile file holds ``maker``, ``model``, ``document`` (the maker's Modbus map it was taken
from), optional ``defaults`` applied to every point, and ``points``. A meter that says
``profile: sdm630`` gets those points; its own ``points`` override profile points field by field
(``{energy: {address: 72}}`` moves just the address) or add new ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edge_agent.config.models import invalid
from edge_agent.config.yaml_loading import load_yaml_file

PACKAGED_PROFILE_DIR = Path(__file__).resolve().parents[1] / "profiles"
PROFILE_KEYS = {"profile", "maker", "model", "document", "defaults", "points", "notes"}


def profile_search_path(extra_dirs: Iterable[Path]) -> list[Path]:
    return [*extra_dirs, PACKAGED_PROFILE_DIR]


def available_profiles(dirs: Sequence[Path]) -> list[str]:
    names = {path.stem for folder in dirs if folder.is_dir() for path in folder.glob("*.yaml")}
    return sorted(names)


def load_profile(
    name: str, dirs: Sequence[Path], cache: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The profile's mapping; with ``cache``, each profile file is read once per configuration
    (a 1,000-meter site names the same profile 1,000 times)."""
    if cache is not None and name in cache:
        return cache[name]
    for folder in profile_search_path(dirs):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            data = load_yaml_file(candidate)
            if not isinstance(data, dict) or not isinstance(data.get("points"), dict):
                raise invalid("profile file {file} has no 'points' mapping", file=candidate)
            unknown = set(data) - PROFILE_KEYS
            if unknown:
                raise invalid(
                    "profile file {file} has unknown keys {keys}",
                    file=candidate,
                    keys=", ".join(sorted(unknown)),
                )
            if cache is not None:
                cache[name] = data
            return data
    raise invalid(
        "{name!r} is not a known profile (available: {known})",
        name=name,
        known=", ".join(available_profiles(profile_search_path(dirs))) or "none",
    )


def merge_profile(
    meter: dict[str, Any],
    dirs: Sequence[Path],
    cache: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the meter mapping with its profile's points merged under its own (the profile's
    mapping is only read: ``cache`` may hand the same one to every meter)."""
    profile = load_profile(str(meter["profile"]), dirs, cache)
    defaults: dict[str, Any] = dict(profile.get("defaults") or {})
    points: dict[str, Any] = {
        name: {**defaults, **(spec or {})} for name, spec in profile["points"].items()
    }
    overrides = meter.get("points") or {}
    if not isinstance(overrides, dict):
        return meter  # let field validation report the wrong type
    for name, spec in overrides.items():
        if isinstance(spec, dict) and name in points:
            points[name] = {**points[name], **spec}
        else:  # the meter's own points stand alone: profile defaults are for profile points
            points[name] = spec
    return {**meter, "points": points}
