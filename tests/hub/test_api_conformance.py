"""The WBCSD PACT Conformance Tool (its own CLI, unmodified) against the hub's API.

The tool (``$EDGE_AGENT_REFERENCE_DIR/pact-conformance``, see its SOURCES.md) is copied once to
``~/.cache/edge-agent/pact-conformance-<commit>`` and installed there with ``npm ci`` (from the
npm registry, once; later runs reuse it). The API runs under uvicorn over HTTPS on loopback with
a test CA that Node is given through NODE_EXTRA_CA_CERTS (no certificate check is disabled),
seeded with real PACT 3.0 footprints in the real SQLite store. Every mandatory V3.0 test must
pass, except those the CLI leaves PENDING because they wait for a callback to the tool's own
server (13, 14.B). Those callbacks are checked here instead: the tool's ``CONFORMANCE_API`` (the
``source`` of its request events) points at a recipient host on loopback, and the hub's answers
to test cases 12 and 14.A must arrive there, valid against the OpenAPI file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.hub.api import RecipientCredentials
from edge_agent.hub.store import SqlHubStore
from tests.hub.api_support import (
    PRODUCT_A,
    RECIPIENT_CLIENT_ID,
    RECIPIENT_SECRET,
    Pki,
    Recipient,
    customer,
    event_problems,
    running_api,
    running_recipient,
    seed,
    two_customers,
)
from tests.unit.footprint_support import REFERENCE_DIR

TOOL = REFERENCE_DIR / "pact-conformance"
CLIENT_ID = "pact-conformance-tool"
CLIENT_SECRET = "conformance-secret-0123456789abcdef"
RUN_TIMEOUT_S = 150
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RESULT = re.compile(r"^(✓|✗|⧗) (.+)$")


@dataclass(frozen=True)
class ToolResult:
    status: str  # PASS, FAIL, PENDING
    name: str
    mandatory: bool
    error: str

    @property
    def number(self) -> str:
        found = re.match(r"Test Case ([0-9]+(?:\.[A-Z])?)", self.name)
        return found.group(1) if found else self.name


def _commit() -> str:
    sources = (TOOL / "SOURCES.md").read_text("utf-8")
    found = re.search(r"commit ([0-9a-f]{7,40})", sources)
    return found.group(1) if found else hashlib.sha256(sources.encode()).hexdigest()[:12]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-agent"


def prepared_tool() -> Path:
    """The tool in the cache folder with its node_modules (npm ci once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the PACT Conformance Tool (not on PATH)")
    if not (TOOL / "package-lock.json").is_file():
        pytest.skip(f"the PACT Conformance Tool is not at {TOOL} (set EDGE_AGENT_REFERENCE_DIR)")
    lock = hashlib.sha256((TOOL / "package-lock.json").read_bytes()).hexdigest()
    target = _cache_root() / f"pact-conformance-{_commit()}"
    marker = target / ".edge-agent-npm-ci"
    if marker.is_file() and marker.read_text() == lock:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="pact-conformance-", dir=target.parent))
    try:
        copy = staging / "tool"
        shutil.copytree(TOOL, copy, ignore=shutil.ignore_patterns("node_modules"))
        for path in [copy, *copy.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)  # the reference copy is read-only
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci for the PACT Conformance Tool failed:\n{done.stderr[-3000:]}")
        (copy / ".edge-agent-npm-ci").write_text(lock)
        if target.exists():
            shutil.rmtree(target)
        copy.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def parse_results(output: str) -> list[ToolResult]:
    """The CLI's summary: "Mandatory Tests:" and "Non-Mandatory Tests:" sections of
    "✓|✗|⧗ <name>" lines, each maybe followed by "  Error: ..." lines."""
    results: list[ToolResult] = []
    mandatory: bool | None = None
    for raw in _ANSI.sub("", output).splitlines():
        line = raw.rstrip()
        if line.startswith("Mandatory Tests:"):
            mandatory = True
            continue
        if line.startswith("Non-Mandatory Tests:"):
            mandatory = False
            continue
        if line.startswith(("STATISTICS", "=")) and results:
            if line.startswith("STATISTICS"):
                mandatory = None
            continue
        if mandatory is None:
            continue
        found = _RESULT.match(line)
        if found:
            status = {"✓": "PASS", "✗": "FAIL", "⧗": "PENDING"}[found.group(1)]
            results.append(ToolResult(status, found.group(2), mandatory, ""))
        elif line.startswith("  Error:") and results:
            last = results[-1]
            results[-1] = ToolResult(last.status, last.name, last.mandatory, line[8:].strip())
    return results


def report(results: list[ToolResult]) -> str:
    return "\n".join(
        f"  {r.status:<7} {'M' if r.mandatory else ' '} {r.name}"
        + (f"\n            {r.error[:300]}" if r.error and r.status != "PASS" else "")
        for r in results
    )


@pytest.fixture
def tool() -> Path:
    return prepared_tool()


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_the_pact_conformance_tool_passes_every_mandatory_v3_test(
    tool: Path, pki: Pki, store: SqlHubStore
) -> None:
    seeded = await seed(store, lots_a=4, lots_b=2)
    clients = [*two_customers(), customer(CLIENT_ID, CLIENT_SECRET, [PRODUCT_A])]
    async with running_recipient(pki, Recipient()) as recipient:
        credentials = {
            recipient.base_url: RecipientCredentials(RECIPIENT_CLIENT_ID, RECIPIENT_SECRET)
        }
        async with running_api(pki, store, clients, recipient_credentials=credentials) as api:
            env = {
                **os.environ,
                "NODE_ENV": "development",
                "PORT": "0",
                "DB_CONNECTION_STRING": "unused",
                "CONFORMANCE_API": recipient.base_url,
                "NODE_EXTRA_CA_CERTS": str(pki.ca_file),
                "LOG_OUTPUT": "console",
                "TESTCASE_TIMEOUT": "15000",
            }
            env.pop("NODE_TLS_REJECT_UNAUTHORIZED", None)
            process = await asyncio.create_subprocess_exec(
                "npx",
                "--no-install",
                "ts-node",
                "src/scripts/run-tests-cli.ts",
                "--baseUrl",
                api.base_url,
                "--clientId",
                CLIENT_ID,
                "--clientSecret",
                CLIENT_SECRET,
                "--version",
                "V3.0",
                "--organizationName",
                "edge-agent test plant",
                cwd=tool,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
                pytest.fail(f"the Conformance Tool did not finish in {RUN_TIMEOUT_S} s")
            output = out.decode("utf-8", "replace")
            results = parse_results(output)
            assert results, f"no results in the tool's output:\n{output[-4000:]}"
            summary = report(results)
            print(f"PACT Conformance Tool, V3.0, against the hub API:\n{summary}")
            mandatory = [r for r in results if r.mandatory]
            assert len(mandatory) >= 30, summary
            failed = [r for r in mandatory if r.status == "FAIL"]
            pending = [r for r in mandatory if r.status == "PENDING"]
            assert not failed, f"mandatory V3.0 tests failed:\n{summary}"
            # PENDING only where the tool waits for a callback to its own server
            assert {r.number for r in pending} <= {"13", "14.B"}, summary
            # ... and those callbacks did go out (to the recipient named by the events)
            answers = await recipient.wait_for(2, within_s=15)
            await api.hub.sender.drain()
    by_request = {event["data"]["requestEventId"].rsplit("/", 1)[-1]: event for event in answers}
    assert set(by_request) == {"12", "14.A"}, answers
    assert by_request["12"]["type"].endswith("RequestFulfilledEvent.3")
    assert {pf["id"] for pf in by_request["12"]["data"]["pfs"]} <= seeded.ids()
    assert by_request["14.A"]["type"].endswith("RequestRejectedEvent.3")
    for event in answers:
        assert event_problems(event) == [], event
