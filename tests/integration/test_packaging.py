"""What an offline install rests on (issue 9): the wheel carries everything the agent loads
at run time, and deploy/requirements.lock pins, with hashes, every runtime dependency that
pyproject.toml names. (Downloading the wheelhouse needs the package index: done by
deploy/wheelhouse.sh, not here — tests stay on loopback.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LEFT_OUT = (".git", ".venv", "build", "*.egg-info", "demo-output", ".*_cache", ".hypothesis")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("deploy/requirements.lock", ()), ("deploy/requirements-hub.lock", ("hub",))],
)
def test_the_locks_pin_every_runtime_dependency_with_hashes(
    lock: str, extras: tuple[str, ...]
) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    text = (REPO / lock).read_text()
    entries = re.findall(
        r"^([A-Za-z0-9_.-]+)==([^\s;]+)(?: ;[^\\\n]*)?((?: \\\n\s+--hash=sha256:[0-9a-f]{64})+)",
        text,
        re.M,
    )
    pinned = {name.lower().replace("_", "-"): version for name, version, _ in entries}
    assert {_name(r) for r in wanted} <= set(pinned), sorted(
        {_name(r) for r in wanted} - set(pinned)
    )
    # Every requirement line of the lock is an exact pin with at least one hash.
    requirement_lines = [line for line in text.splitlines() if re.match(r"^[A-Za-z0-9]", line)]
    assert len(requirement_lines) == len(entries)


def test_the_wheel_carries_profiles_schemas_and_type_information(tmp_path: Path) -> None:
    # Built from a clean copy: setuptools' build/ folder in a checkout may hold stale files.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*LEFT_OUT))
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = out.glob("edge_agent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    profiles = {p.name for p in (REPO / "edge_agent/profiles").glob("*.yaml")}
    assert profiles
    assert {f"edge_agent/profiles/{name}" for name in profiles} <= names
    schemas = {p.name for p in (REPO / "edge_agent/schemas").glob("*.json")}
    assert {f"edge_agent/schemas/{name}" for name in schemas} <= names
    assert "edge_agent/py.typed" in names
    assert not any(name.startswith(("tests/", ".venv/")) for name in names)


def test_the_install_scripts_parse() -> None:
    for script in ("deploy/install.sh", "deploy/wheelhouse.sh"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True, timeout=30)
