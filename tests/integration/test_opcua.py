"""The OPC UA source against the asyncua machine simulator on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client

from edge_agent.clock import SystemClock
from edge_agent.config import parse_config
from edge_agent.config.models import OpcUaMeter
from edge_agent.domain import Quality, Sample
from edge_agent.sources.opcua.adapter import (
    OpcUaEndpointSource,
    build_opcua_sources,
    probe_endpoint,
)
from simulators.opcua_machines import (
    CLIENT_URI,
    NAMESPACE,
    SERVER_URI,
    CertificatePair,
    OpcUaMachineServer,
    machines_for,
    make_certificate,
)

MACHINE = "welding-robot"
STATES = {0: "off", 1: "idle", 2: "running", 3: "setup", 4: "fault"}


def opcua_config(
    url: str, tmp_path: Path, *, mode: str = "read", ns: int = 4, **endpoint: Any
) -> Any:
    return parse_config(
        {
            "site": {"id": "s"},
            "meters": [
                {
                    "id": "m-weld",
                    "protocol": "opcua",
                    "endpoint": "cell",
                    "points": {
                        "energy": {
                            "node": f"nsu={NAMESPACE};s={MACHINE}.EnergyTotal",
                            "unit": "kWh",
                            "role": "energy",
                        },
                        "power": {
                            "node": f"/Objects/{ns}:{MACHINE}/{ns}:ActivePower",
                            "unit": "kW",
                            "role": "power",
                        },
                        "state": {
                            "node": f"nsu={NAMESPACE};s={MACHINE}.State",
                            "role": "state",
                            "states": STATES,
                        },
                    },
                }
            ],
            "opcua_endpoints": [
                {
                    "id": "cell",
                    "url": url,
                    "mode": mode,
                    "interval_s": 0.2,
                    "timeout_s": 2.0,
                    **endpoint,
                }
            ],
        },
        tmp_path,
    )


async def collect(source: OpcUaEndpointSource, seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    task = asyncio.create_task(source.run(samples.extend))
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return samples


@pytest.fixture
async def server() -> AsyncIterator[OpcUaMachineServer]:
    # Two extra namespaces first: our index is 4, not 2 — nsu= must still find the nodes.
    sim = OpcUaMachineServer(machines_for([MACHINE]), extra_namespaces=["urn:a", "urn:b"])
    async with sim:
        yield sim


def check_against_truth(samples: list[Sample], sim: OpcUaMachineServer) -> int:
    machine = sim.machines[MACHINE]
    energy = [s for s in samples if s.point == "energy" and s.quality is Quality.GOOD]
    for sample in energy:
        assert sample.value is not None
        # SourceTimestamp is the write instant (microseconds): the value is the truth there
        assert sample.value == pytest.approx(machine.energy_kwh_at(sample.ts_ns), abs=1e-6)
    return len(energy)


def check_increasing(samples: list[Sample]) -> None:
    """No reading twice: per point, good readings have strictly increasing timestamps."""
    last: dict[str, int] = {}
    for sample in samples:
        if sample.quality is Quality.GOOD:
            assert sample.ts_ns > last.get(sample.point, 0), sample
            last[sample.point] = sample.ts_ns


@pytest.mark.parametrize("mode", ["read", "subscribe"])
async def test_modes_match_ground_truth(
    server: OpcUaMachineServer, tmp_path: Path, mode: str
) -> None:
    assert server.namespace_index == 4
    (source,) = build_opcua_sources(opcua_config(server.url, tmp_path, mode=mode), SystemClock())
    machine = server.machines[MACHINE]
    await server.set_state(MACHINE, "running")
    samples: list[Sample] = []
    task = asyncio.create_task(source.run(samples.extend))
    try:
        await asyncio.sleep(1.2)
        await server.set_state(MACHINE, "setup")
        await asyncio.sleep(1.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert check_against_truth(samples, server) >= 8
    check_increasing(samples)
    states = [s for s in samples if s.point == "state" and s.quality is Quality.GOOD]
    assert {s.state for s in states} == {"running", "setup"}
    for sample in states:
        assert sample.state == machine.state_at(sample.ts_ns)
    power = [s for s in samples if s.point == "power" and s.quality is Quality.GOOD]
    assert len(power) >= 8
    for sample in power:  # the browse path resolves to the right node
        assert sample.value == pytest.approx(machine.power_kw_at(sample.ts_ns), rel=1e-9)
    # a regular reading every interval for the counter (about 12 ticks in 2.4 s)
    assert len([s for s in samples if s.point == "energy"]) >= 8


async def test_unresolvable_point_fails_alone(server: OpcUaMachineServer, tmp_path: Path) -> None:
    config = opcua_config(server.url, tmp_path)
    raw = config.model_dump(mode="json")
    points = raw["meters"][0]["points"]
    points["missing_path"] = {"node": "/Objects/4:no-such-machine/4:EnergyTotal", "unit": "kWh"}
    points["missing_ns"] = {"node": "nsu=urn:not-here;s=x", "unit": "kWh"}
    points["missing_id"] = {"node": "ns=4;s=no-such-node", "unit": "kWh"}
    (source,) = build_opcua_sources(parse_config(raw, tmp_path), SystemClock())
    samples = {s.point: s for s in await source.read_now(["m-weld"])}
    await source.close()
    assert {samples[p].quality for p in ("energy", "power", "state")} == {Quality.GOOD}
    assert samples["missing_path"].quality is Quality.ILLEGAL_ADDRESS
    assert "not found on the server" in samples["missing_path"].detail
    assert samples["missing_ns"].quality is Quality.ILLEGAL_ADDRESS
    assert "urn:not-here" in samples["missing_ns"].detail
    assert samples["missing_id"].quality is Quality.ILLEGAL_ADDRESS
    assert "BadNodeIdUnknown" in samples["missing_id"].detail


@pytest.mark.parametrize("mode", ["read", "subscribe"])
async def test_reconnects_after_server_restart(tmp_path: Path, mode: str) -> None:
    sim = OpcUaMachineServer(machines_for([MACHINE]))
    await sim.start()
    config = opcua_config(sim.url, tmp_path, ns=sim.namespace_index, mode=mode)
    (source,) = build_opcua_sources(config, SystemClock())
    samples: list[Sample] = []
    task = asyncio.create_task(source.run(samples.extend))
    # Same machines, same port, but the namespace index moves (2 -> 3): nsu= ids and the
    # browse path must be resolved again, not reused from the old session.
    restarted = OpcUaMachineServer(sim.machines, port=sim.port, extra_namespaces=["urn:new"])
    try:
        await asyncio.sleep(1.0)
        await sim.set_state(MACHINE, "running")
        await asyncio.sleep(0.5)
        await sim.stop()
        await asyncio.sleep(1.5)
        await restarted.start()
        restarted_ns = SystemClock().now_ns()

        def resumed() -> bool:
            return any(
                s.point == "energy" and s.quality is Quality.GOOD and s.ts_ns > restarted_ns
                for s in samples
            )

        # the reconnect backoff (0.5, 1, 2, 4 s) bounds how long this takes
        for _ in range(120):
            if resumed():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await restarted.stop()
    energy = [s for s in samples if s.point == "energy"]
    bad = [s for s in energy if s.quality is not Quality.GOOD]
    assert bad, "the outage must show in the samples"
    good = [s for s in energy if s.quality is Quality.GOOD]
    before = [s for s in good if s.ts_ns < bad[0].ts_ns]
    after = [s for s in good if s.ts_ns > bad[-1].ts_ns]
    assert before
    assert after, [(s.quality.value, s.detail, s.ts_ns) for s in energy]
    # the counter covers the outage: energy across it equals the machine's true energy
    machine = sim.machines[MACHINE]
    across = after[0].value - before[-1].value  # type: ignore[operator]
    truth = machine.energy_kwh_at(after[0].ts_ns) - machine.energy_kwh_at(before[-1].ts_ns)
    assert across == pytest.approx(truth, abs=1e-6)
    assert across > 0.001  # the robot ran through the outage: the counter carries it
    assert source.reconnects == 1
    assert "first reading after an outage of" in after[0].detail
    # the energy and state ids name their namespace by URI and follow it to index 3; the
    # power browse path was written with index 2 and now names nothing: that is why nsu= is safer
    last_power = [s for s in samples if s.point == "power"][-1]
    assert last_power.quality is Quality.ILLEGAL_ADDRESS
    check_increasing(samples)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertificatePair]:
    folder = tmp_path_factory.mktemp("pki")

    async def make() -> dict[str, CertificatePair]:
        return {
            "server": await make_certificate(folder, "server", SERVER_URI, server=True),
            "other": await make_certificate(folder, "other", SERVER_URI, server=True),
            "client": await make_certificate(folder, "client", CLIENT_URI, server=False),
        }

    return asyncio.run(make())


def secure_endpoint(pki: dict[str, CertificatePair], trusted: Path, **extra: Any) -> dict[str, Any]:
    return {
        "security": {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate": str(pki["client"].certificate),
            "private_key": str(pki["client"].private_key),
            "trusted_server_certificates": str(trusted),
        },
        "username": "edge",
        "password_env": "EDGE_TEST_OPCUA_PASSWORD",
        **extra,
    }


async def test_sign_and_encrypt_with_user_and_security_errors(
    pki: dict[str, CertificatePair], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = OpcUaMachineServer(
        machines_for([MACHINE]), certificate=pki["server"], users={"edge": "s3cret"}
    )
    async with sim:
        monkeypatch.setenv("EDGE_TEST_OPCUA_PASSWORD", "s3cret")
        good = opcua_config(
            sim.url,
            tmp_path,
            ns=sim.namespace_index,
            **secure_endpoint(pki, pki["server"].certificate),
        )
        (source,) = build_opcua_sources(good, SystemClock())
        samples = await source.read_now(["m-weld"])
        await source.close()
        assert {s.quality for s in samples} == {Quality.GOOD}, [s.detail for s in samples]
        assert check_against_truth(samples, sim) == 1

        monkeypatch.setenv("EDGE_TEST_OPCUA_PASSWORD", "wrong")
        wrong = opcua_config(
            sim.url,
            tmp_path,
            ns=sim.namespace_index,
            **secure_endpoint(pki, pki["server"].certificate),
        )
        endpoint = wrong.opcua_endpoints[0]
        meters = [m for m in wrong.meters if isinstance(m, OpcUaMeter)]
        samples = await probe_endpoint(endpoint, meters, SystemClock())
        assert {s.quality for s in samples} == {Quality.SECURITY}
        assert samples[0].detail == "user 'edge' rejected (BadUserAccessDenied)"

        monkeypatch.setenv("EDGE_TEST_OPCUA_PASSWORD", "s3cret")
        untrusted = opcua_config(
            sim.url, tmp_path, **secure_endpoint(pki, pki["other"].certificate)
        )
        (source,) = build_opcua_sources(untrusted, SystemClock())
        samples = await source.read_now(["m-weld"])
        await source.close()
        assert {s.quality for s in samples} == {Quality.SECURITY}
        assert "server certificate not trusted" in samples[0].detail


async def test_policy_not_offered_is_a_security_error(
    server: OpcUaMachineServer,
    pki: dict[str, CertificatePair],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGE_TEST_OPCUA_PASSWORD", "x")
    config = opcua_config(server.url, tmp_path, **secure_endpoint(pki, pki["server"].certificate))
    (source,) = build_opcua_sources(config, SystemClock())
    samples = await source.read_now(["m-weld"])
    await source.close()
    assert {s.quality for s in samples} == {Quality.SECURITY}
    assert samples[0].detail == (
        "security policy Basic256Sha256/SignAndEncrypt not offered by the server "
        "(offers: None/None)"
    )


async def test_simulator_shows_a_state_change_at_once_with_its_instant() -> None:
    """A machine switched directly (as the MES simulator does) is on the OPC UA nodes at once,
    stamped with the change's instant — not only at the next tick — so a read-on-event after
    the MES event sees the new state and the counter exact at the boundary."""
    sim = OpcUaMachineServer(machines_for([MACHINE]), tick_s=30.0)  # no tick during the test
    async with sim, Client(sim.url) as client:
        machine = sim.machines[MACHINE]
        changed_ns = machine.set_state("running", machine.clock.now_ns() // 1_000 * 1_000)
        await asyncio.sleep(0.05)  # the write is scheduled, not awaited by set_state
        idx = sim.namespace_index
        state = await client.get_node(f"ns={idx};s={MACHINE}.State").read_data_value()
        energy = await client.get_node(f"ns={idx};s={MACHINE}.EnergyTotal").read_data_value()
    assert state.Value.Value == 2  # running
    assert state.SourceTimestamp is not None
    assert round(state.SourceTimestamp.timestamp() * 1e6) * 1_000 == changed_ns
    assert energy.Value.Value == pytest.approx(machine.energy_kwh_at(changed_ns), abs=1e-9)
