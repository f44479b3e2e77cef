"""`edge-agent hub check` and the hub's start-up failures (issue 11), as a user runs them: one
line per problem with its key path, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulators.modbus_meters import SimulatedPlant
from simulators.plant import agent_config

REPO = Path(__file__).resolve().parents[2]


def _footprint() -> Any:
    return agent_config(
        SimulatedPlant(), mqtt_host="h", mqtt_port=1, store_path=Path("x"), steps=()
    )["footprint"]


def _hub(tmp: Path, *command: str, **config: Any) -> subprocess.CompletedProcess[str]:
    base: dict[str, Any] = {
        "sites": [{"id": "osaka-plant"}],
        "store": {"url": "sqlite:///hub.db"},
        "footprint": _footprint(),
    }
    base.update(config)
    path = tmp / "hub.yaml"
    path.write_text(yaml.safe_dump(base))
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "hub", *command, "-c", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_a_good_configuration_checks_and_names_what_it_found(tmp_path: Path) -> None:
    result = _hub(tmp_path, "check")
    assert result.returncode == 0, result.stderr
    assert "hub configuration OK" in result.stdout
    assert "API:       off" in result.stdout
    assert (tmp_path / "hub.db").exists()  # the database was reached (and created)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sites": []}, "sites: [] is not valid"),
        ({"store": {"url": "mysql://x"}}, "store: "),
        ({"store": {"url": "postgresql://hub:secret@db/hub"}}, "store: put no password in the url"),
        ({"api": {"cert_file": "missing.pem", "key_file": "missing-key.pem"}},
         "api.cert_file: "),
        ({"api": {"cert_file": "a.pem"}}, "api: give both cert_file and key_file"),
        ({"api": {"clients": [{"id": "c", "secret_hash": "plain-text", "products": []}]}},
         "api.clients[0].secret_hash: 'plain-text' is not valid"),
        ({"mqtt": {"password_env": "EDGE_HUB_TEST_UNSET", "username": "u"}},
         "mqtt.password_env: environment variable 'EDGE_HUB_TEST_UNSET' is not set"),
        ({"footprint": {"company": {}}}, "footprint.company.name: required"),
        ({"product_period": "week"}, "product_period: 'week' is not valid"),
    ],
)  # fmt: skip
def test_each_problem_names_its_key_and_exits_2(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    for command in ("check", "run"):
        result = _hub(tmp_path, command, **changes)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert "problem(s)" in lines[0]
        assert any(line.strip().startswith(expected) for line in lines[1:]), result.stderr


def test_hash_secret_reads_stdin_and_refuses_a_short_secret(tmp_path: Path) -> None:
    def run(secret: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "hub", "hash-secret"],
            input=secret + "\n", capture_output=True, text=True, timeout=60, cwd=REPO,
            check=False, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    good = run("a-long-enough-client-secret")
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("scrypt$")
    assert run("short").returncode == 2
