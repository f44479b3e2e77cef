"""Simulated machine controllers on OPC UA: per equipment a State, an ActivePower and an
EnergyTotal node, consistent with each other (the same load model as the Modbus meters).

Each equipment is a folder ``<equipment>`` in namespace ``urn:edge-agent:sim:machines`` with
string node ids ``<equipment>.State`` (Int32: 0 off, 1 idle, 2 running, 3 setup, 4 fault),
``<equipment>.ActivePower`` (Double, kW) and ``<equipment>.EnergyTotal`` (Double, kWh). Values
are written every ``tick_s`` and at every state change, with the write instant as the
SourceTimestamp, so a reading's value is the exact ground truth at its timestamp.

Optionally secured: Basic256Sha256 and Aes128_Sha256_RsaOaep (Sign / SignAndEncrypt) with a
generated self-signed server certificate, and a username/password user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_agent.clock import SystemClock
from simulators.broker import HOST, free_port
from simulators.machines import PROFILES, STATE_CODES, SimulatedMachine

NAMESPACE = "urn:edge-agent:sim:machines"
SERVER_URI = "urn:edge-agent:sim:opcua-server"
CLIENT_URI = "urn:edge-agent:client"


@dataclass(frozen=True, slots=True)
class CertificatePair:
    certificate: Path  # DER
    private_key: Path  # PEM


async def make_certificate(
    folder: Path, name: str, app_uri: str, *, server: bool
) -> CertificatePair:
    """A self-signed OPC UA application certificate (tests and commissioning only)."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = CertificatePair(folder / f"{name}-cert.der", folder / f"{name}-key.pem")
    await setup_self_signed_certificate(
        pair.private_key,
        pair.certificate,
        app_uri,
        socket.gethostname(),
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
        {"countryName": "JP", "organizationName": "edge-agent", "commonName": name},
    )
    return pair


class _PasswordUsers:
    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User)
        return None


class OpcUaMachineServer:
    def __init__(
        self,
        machines: Mapping[str, SimulatedMachine],
        *,
        port: int | None = None,
        certificate: CertificatePair | None = None,
        users: Mapping[str, str] | None = None,
        extra_namespaces: Sequence[str] = (),
        tick_s: float = 0.1,
    ) -> None:
        self.machines = dict(machines)
        self.port = port or free_port()
        self.url = f"opc.tcp://{HOST}:{self.port}/edge-agent/sim"
        self._certificate = certificate
        self._users = users
        self._extra_namespaces = tuple(extra_namespaces)
        self._tick_s = tick_s
        self._server: Server | None = None
        self._nodes: dict[str, dict[str, Any]] = {}
        self._ticker: asyncio.Task[None] | None = None
        # One snapshot at a time: a tick's writes interleaved with a state change's would leave
        # an older value on a node after a newer one.
        self._publishing = asyncio.Lock()
        self._writes: set[asyncio.Task[None]] = set()
        self._published_ns = 0
        self.namespace_index = 0

    async def start(self) -> None:
        server = Server(user_manager=_PasswordUsers(self._users) if self._users else None)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("edge-agent simulated machines")
        await server.set_application_uri(SERVER_URI)
        if self._certificate is not None:
            await server.load_certificate(str(self._certificate.certificate))
            await server.load_private_key(str(self._certificate.private_key))
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
                ]
            )
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        for uri in self._extra_namespaces:  # shifts our namespace index, as a real server may
            await server.register_namespace(uri)
        idx = await server.register_namespace(NAMESPACE)
        self.namespace_index = idx
        for name in self.machines:
            folder = await server.nodes.objects.add_folder(
                ua.NodeId(name, idx), ua.QualifiedName(name, idx)
            )
            self._nodes[name] = {
                "State": await folder.add_variable(
                    ua.NodeId(f"{name}.State", idx), ua.QualifiedName("State", idx), 0, ua.VariantType.Int32
                ),
                "ActivePower": await folder.add_variable(
                    ua.NodeId(f"{name}.ActivePower", idx), ua.QualifiedName("ActivePower", idx), 0.0,
                    ua.VariantType.Double,
                ),
                "EnergyTotal": await folder.add_variable(
                    ua.NodeId(f"{name}.EnergyTotal", idx), ua.QualifiedName("EnergyTotal", idx), 0.0,
                    ua.VariantType.Double,
                ),
            }  # fmt: skip
        await server.start()
        self._server = server
        await self.publish_values()
        self._ticker = asyncio.create_task(self._tick())
        for machine in self.machines.values():
            machine.on_state_change = self._state_changed

    def _state_changed(self, t_ns: int) -> None:
        """A state change set on the machine directly: publish its snapshot right away."""
        task = asyncio.get_running_loop().create_task(self.publish_values(t_ns))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def stop(self) -> None:
        for machine in self.machines.values():
            machine.on_state_change = None
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._server is not None:
            await self._server.stop()
            self._server = None
        self._nodes.clear()

    async def set_state(self, equipment: str, state: str) -> int:
        machine = self.machines[equipment]
        async with self._publishing:
            # An OPC UA DateTime has 100 ns ticks and asyncua's datetime keeps microseconds: the
            # change goes on a whole microsecond so its SourceTimestamp is its exact time.
            at_ns = -(-machine.clock.now_ns() // 1_000) * 1_000
            t_ns = machine.set_state(state, at_ns)
            await self._publish(t_ns)
        return t_ns

    async def publish_values(self, t_ns: int | None = None) -> None:
        async with self._publishing:
            await self._publish(t_ns)

    async def _publish(self, t_ns: int | None) -> None:
        if t_ns is not None and t_ns < self._published_ns:
            return  # a newer snapshot (which includes this change) is already on the nodes
        for name, nodes in self._nodes.items():
            machine = self.machines[name]
            at = t_ns if t_ns is not None else machine.clock.now_ns() // 1_000 * 1_000
            self._published_ns = max(self._published_ns, at)
            stamp = datetime.fromtimestamp(at / 1e9, tz=UTC)
            values = {
                "State": ua.Variant(STATE_CODES[machine.state_at(at)], ua.VariantType.Int32),
                "ActivePower": ua.Variant(machine.power_kw_at(at), ua.VariantType.Double),
                "EnergyTotal": ua.Variant(machine.energy_kwh_at(at), ua.VariantType.Double),
            }
            for key, variant in values.items():
                await nodes[key].write_value(
                    ua.DataValue(variant, SourceTimestamp=stamp, ServerTimestamp=stamp)
                )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            await self.publish_values()

    async def __aenter__(self) -> OpcUaMachineServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


def machines_for(
    names: Sequence[str], *, initial_kwh: float = 40.0, truth_log_dir: Path | None = None
) -> dict[str, SimulatedMachine]:
    """One machine per name (a key of ``PROFILES``); with ``truth_log_dir``, each writes its
    ground truth as JSON lines to ``<dir>/<name>.jsonl``."""
    clock = SystemClock()
    if truth_log_dir is not None:
        truth_log_dir.mkdir(parents=True, exist_ok=True)
    return {
        name: SimulatedMachine(
            PROFILES[name],
            clock,
            seed=index + 11,
            initial_kwh=initial_kwh + index,
            truth_log=truth_log_dir / f"{name}.jsonl" if truth_log_dir else None,
        )
        for index, name in enumerate(names)
    }


async def _serve(args: argparse.Namespace) -> None:
    names = [name.strip() for name in args.machines.split(",") if name.strip()]
    certificate = client = None
    if args.secure:
        certificate = await make_certificate(Path(args.pki), "server", SERVER_URI, server=True)
        client = await make_certificate(Path(args.pki), "client", CLIENT_URI, server=False)
    users = {args.user: args.password} if args.user else None
    truth = Path(args.truth_log) if args.truth_log else None
    machines = machines_for(names, truth_log_dir=truth)
    try:
        await _serve_machines(args, machines, certificate, client, users, truth)
    finally:
        for machine in machines.values():
            machine.close()  # completes the truth log up to now


async def _serve_machines(
    args: argparse.Namespace,
    machines: dict[str, SimulatedMachine],
    certificate: CertificatePair | None,
    client: CertificatePair | None,
    users: dict[str, str] | None,
    truth: Path | None,
) -> None:
    names = list(machines)
    async with OpcUaMachineServer(
        machines, port=args.port, certificate=certificate, users=users
    ) as sim:
        print(f"OPC UA server {sim.url} namespace {NAMESPACE} (index {sim.namespace_index})")
        for name in names:
            print(f"  nsu={NAMESPACE};s={name}.EnergyTotal | .ActivePower | .State")
        if certificate and client:
            print(f"  server certificate: {certificate.certificate} (trust it in the agent)")
            print(f"  agent certificate:  {client.certificate}, key {client.private_key}")
        if truth:
            print(f"  ground truth: {truth}/<machine>.jsonl")
        await asyncio.sleep(args.duration) if args.duration else await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve simulated machines over OPC UA on 127.0.0.1"
    )
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--machines", default="welding-robot", help="comma-separated machine types")
    parser.add_argument(
        "--secure", action="store_true", help="Basic256Sha256/Aes128 with a generated certificate"
    )
    parser.add_argument("--pki", default="opcua-pki", help="folder for generated certificates")
    parser.add_argument("--user", default="", help="require this user name")
    parser.add_argument("--password", default="", help="the user's password")
    parser.add_argument("--truth-log", default="", help="folder for <machine>.jsonl ground truth")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    args = parser.parse_args(argv)
    unknown = [n for n in args.machines.split(",") if n.strip() and n.strip() not in PROFILES]
    if unknown:
        parser.error(f"unknown machine type(s) {', '.join(unknown)} (known: {', '.join(PROFILES)})")
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
