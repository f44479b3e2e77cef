"""The OPC UA machine simulator's command line: served values agree with its ground-truth log."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC
from pathlib import Path

import pytest
from asyncua import Client

from edge_agent.domain import ns_from_datetime
from simulators.broker import free_port
from simulators.machines import NS_PER_HOUR, STATE_CODES, read_truth_log
from simulators.opcua_machines import NAMESPACE, main


def truth_at(rows: list[dict[str, object]], t_ns: int) -> tuple[float, str]:
    """Counter and state at ``t_ns`` from the JSON lines: the last change before it, plus its
    constant power for the time since (power is piecewise constant)."""
    row = [r for r in rows if int(str(r["t_ns"])) <= t_ns][-1]
    energy = float(str(row["counter_kwh"]))
    energy += float(str(row["power_kw"])) * (t_ns - int(str(row["t_ns"]))) / NS_PER_HOUR
    return energy, str(row["state"])


async def read_machine(url: str, machine: str) -> list[tuple[float, int, int]]:
    async with Client(url, timeout=4) as client:
        idx = await client.get_namespace_index(NAMESPACE)
        out = []
        for _ in range(5):
            energy, state = await client.read_attributes(
                [
                    client.get_node(f"ns={idx};s={machine}.EnergyTotal"),
                    client.get_node(f"ns={idx};s={machine}.State"),
                ]
            )
            stamp = energy.SourceTimestamp
            assert stamp is not None
            ts = ns_from_datetime(stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC))
            out.append((float(energy.Value.Value), ts, int(state.Value.Value)))
            await asyncio.sleep(0.15)
        return out


def test_cli_serves_values_matching_its_truth_log(tmp_path: Path) -> None:
    port = free_port()
    # Long enough for asyncua's start-up on a busy machine (2.5 s was not, with other tests
    # running beside this one) plus the reads.
    argv = ["--port", str(port), "--machines", "press-brake,assembly", "--duration", "6"]
    argv += ["--truth-log", str(tmp_path)]
    exit_codes: list[int] = []
    server = threading.Thread(target=lambda: exit_codes.append(main(argv)))
    server.start()
    try:
        url = f"opc.tcp://127.0.0.1:{port}/edge-agent/sim"
        for _ in range(100):  # wait for the server to listen
            try:
                readings = asyncio.run(read_machine(url, "assembly"))
                break
            except (OSError, TimeoutError):
                time.sleep(0.05)
        else:
            pytest.fail("the simulator never answered")
    finally:
        server.join(timeout=10)
    assert exit_codes == [0]
    rows = read_truth_log(tmp_path / "assembly.jsonl")
    assert len(rows) >= 2  # the start, then noise steps every 0.5 s
    codes = {code: name for name, code in STATE_CODES.items()}
    for energy, ts, state in readings:
        expected_kwh, expected_state = truth_at(rows, ts)
        assert energy == pytest.approx(expected_kwh, abs=1e-9)
        assert codes[state] == expected_state
    assert (tmp_path / "press-brake.jsonl").exists()


def test_cli_rejects_an_unknown_machine(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--machines", "welding-robot,toaster"])
    assert caught.value.code == 2
    assert "unknown machine type(s) toaster" in capsys.readouterr().err
