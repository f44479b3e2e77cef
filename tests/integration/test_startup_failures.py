"""Start-up problems stop `run` at once: exit status 2, one line per problem naming the key,
no traceback, no process left alive doing nothing (issue 9, "zombie agent").

The agent runs as a subprocess, as the service manager runs it; each case has a timeout. The
same problems make `check` fail, since `check` is what an installer runs first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config.yaml_loading import load_yaml_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = load_yaml_text((REPO / "config/example.yaml").read_text())
START_TIMEOUT_S = 20


def edge_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        cwd=REPO,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def config(tmp_path: Path, **mqtt: Any) -> dict[str, Any]:
    """The shipped example with its secrets in place and a store in ``tmp_path``."""
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(EXAMPLE))  # a deep copy
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    data["mqtt"].update({"password_file": str(secret), "port": 1, **mqtt})
    data["store"]["path"] = str(tmp_path / "agent.db")
    security = data["opcua_endpoints"][0]["security"]
    for key in ("certificate", "private_key", "trusted_server_certificates"):
        if key in security:
            (tmp_path / key).write_text("")
            security[key] = str(tmp_path / key)
    return data


def write(data: dict[str, Any], path: Path) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


OPCUA_ENV = {"EDGE_AGENT_OPCUA_PASSWORD": "x"}


def test_the_example_with_its_secrets_in_place_passes_check(tmp_path: Path) -> None:
    result = edge_agent("check", "-c", write(config(tmp_path), tmp_path / "c.yaml"), env=OPCUA_ENV)
    assert result.returncode == 0, result.stderr
    assert "configuration OK: site plant-osaka" in result.stdout
    assert "4 (1 modbus_rtu, 2 modbus_tcp, 1 opcua)" in result.stdout


def test_the_shipped_example_names_the_secrets_this_machine_lacks() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_OPCUA_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "check", "-c", "config/example.yaml"],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=REPO, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].endswith(f"{len(lines) - 1} problem(s)")
    assert any(line.strip().startswith("mqtt.password_file: cannot read") for line in lines)
    assert any(line.strip().startswith("opcua_endpoints[0].security.certificate") for line in lines)
    assert any(
        "opcua_endpoints[0].password_env: environment variable 'EDGE_AGENT_OPCUA_PASSWORD'" in line
        for line in lines
    )


def _case(name: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, str], str]:
    """(config, environment, the start of the expected problem line)."""
    data, env = config(tmp_path), dict(OPCUA_ENV)
    if name == "password_file missing":
        data["mqtt"]["password_file"] = str(tmp_path / "nowhere")
        return data, env, "mqtt.password_file: cannot read"
    if name == "password_env unset":
        del data["mqtt"]["password_file"]
        data["mqtt"]["password_env"] = "EDGE_AGENT_TEST_UNSET_VARIABLE"
        return data, env, "mqtt.password_env: environment variable 'EDGE_AGENT_TEST_UNSET_VARIABLE'"
    if name == "ca_file missing":
        data["mqtt"]["tls"] = {"ca_file": str(tmp_path / "no-ca.pem")}
        return data, env, "mqtt.tls.ca_file:"
    if name == "ca_file not a certificate":
        junk = tmp_path / "ca.pem"
        junk.write_text("not a certificate\n")
        data["mqtt"]["tls"] = {"ca_file": str(junk)}
        return data, env, "mqtt.tls.ca_file:"
    if name == "store under a file":
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        data["store"]["path"] = str(blocker / "db" / "agent.db")
        return data, env, "store.path:"
    if name == "store is a folder":
        data["store"]["path"] = str(tmp_path)
        return data, env, "store.path:"
    if name == "unknown topic placeholder":
        data["mqtt"]["order_topic"] = "{prefix}/{site}/{area}/{equipment}/lots/{lot_id}"
        return data, env, "mqtt.order_topic:"
    if name == "opcua password_env unset":
        return data, {}, "opcua_endpoints[0].password_env:"
    raise AssertionError(name)


CASES = [
    "password_file missing",
    "password_env unset",
    "ca_file missing",
    "ca_file not a certificate",
    "store under a file",
    "store is a folder",
    "unknown topic placeholder",
    "opcua password_env unset",
]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("command", ["check", "run"])
def test_a_start_up_problem_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, name: str, command: str
) -> None:
    data, env, expected = _case(name, tmp_path)
    path = write(data, tmp_path / "c.yaml")
    base = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_OPCUA_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", command, "-c", path],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=REPO, check=False,
        env={**base, "PYTHONPATH": str(REPO), **env},
    )  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].endswith("1 problem(s)"), lines
    assert lines[1].strip().startswith(expected), lines
    assert not (tmp_path / "agent.db").exists()  # nothing started
