"""``edge-agent hub …``: run, check, re-sync, list footprints, hash a client secret."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from edge_agent.config import read_secret
from edge_agent.domain import iso_from_ns
from edge_agent.errors import ConfigError
from edge_agent.export import parse_time
from edge_agent.hub.config import HubConfig, load_hub_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hub = commands.add_parser("hub", help="the plant hub: records of every gateway -> PACT API")
    actions = hub.add_subparsers(dest="hub_command", required=True)
    for name, text in (
        ("run", "ingest records, issue footprints, serve the PACT API"),
        ("check", "validate the hub configuration (and reach its database)"),
        ("footprints", "list the footprints the hub serves"),
        ("leave", "end this instance's broker session (decommission it: nothing queues for it)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("-c", "--config", required=True, help="hub YAML configuration")
    resync = actions.add_parser("resync", help="ask the gateways to publish their records again")
    resync.add_argument("-c", "--config", required=True, help="hub YAML configuration")
    resync.add_argument("--since", type=parse_time, metavar="ISO", help="records created since")
    resync.add_argument("--from-seq", type=int, help="records from this sequence number")
    resync.add_argument("--gateway", help="only this gateway (its MQTT client id)")
    actions.add_parser("hash-secret", help="hash a client secret read from stdin")


def main(args: argparse.Namespace) -> int:
    if args.hub_command == "hash-secret":
        return _hash_secret()
    try:
        config = load_hub_config(Path(args.config))
        _preflight(config)
    except ConfigError as exc:
        exc.report(args.config)
        return EXIT_CONFIG
    if args.hub_command == "check":
        return asyncio.run(_check(config))
    if args.hub_command == "footprints":
        return asyncio.run(_footprints(config))
    if args.hub_command == "resync":
        return asyncio.run(_resync(config, args.since, args.from_seq, args.gateway))
    if args.hub_command == "leave":
        return _leave(config)
    from edge_agent.hub.app import run_hub  # noqa: PLC0415

    return asyncio.run(run_hub(config))


def _preflight(config: HubConfig) -> None:
    """What ``run`` needs from the machine: secrets and the TLS files, readable."""
    problems: list[str] = []
    refs: list[tuple[Any, str]] = [(config.mqtt, "mqtt"), (config.store, "store")]
    refs += [
        (client.events_credentials, f"api.clients[{index}].events_credentials")
        for index, client in enumerate(config.api.clients)
        if client.events_credentials is not None
    ]
    for ref, what in refs:
        try:
            read_secret(ref, what)
        except ConfigError as exc:
            problems += exc.problems
    for key in ("cert_file", "key_file", "token_key_file"):
        path = getattr(config.api, key)
        if path is not None and not Path(path).is_file():
            problems.append(f"api.{key}: {path} is not a readable file")
    if problems:
        raise ConfigError(problems)


async def _check(config: HubConfig) -> int:
    from edge_agent.hub.store import open_hub_store  # noqa: PLC0415

    try:
        store = await open_hub_store(config.store)
    except Exception as exc:  # the database's own error, on one line
        print(f"store.url: cannot open {config.store.url.split('@')[-1]}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        gateways = await store.gateways()
    finally:
        await store.close()
    print(
        f"hub configuration OK: {config.hub_id}\n"
        f"  sites:     {', '.join(s.id for s in config.sites)}\n"
        f"  broker:    {config.mqtt.host}:{config.mqtt.port} as {config.mqtt.client_id}, share "
        f"group {config.mqtt.share_group}\n"
        f"  store:     {config.store.url.split('@')[-1]} ({len(gateways)} gateways seen)\n"
        f"  API:       "
        + (
            f"https://{config.api.host}:{config.api.port}, {len(config.api.clients)} clients"
            if config.api.cert_file
            else "off (no api.cert_file / api.key_file)"
        )
    )
    return EXIT_OK


async def _footprints(config: HubConfig) -> int:
    from edge_agent.hub.model import FootprintFilter  # noqa: PLC0415
    from edge_agent.hub.store import open_hub_store  # noqa: PLC0415

    store = await open_hub_store(config.store)
    try:
        page = await store.list_footprints(None, FootprintFilter(), 0, 1000)
    finally:
        await store.close()
    for row in page.items:
        pcf = row.payload.get("pcf", {})
        print(
            f"{row.id}  {row.status:<10} {row.key:<40} v{row.version}  "
            f"{pcf.get('pcfExcludingBiogenicUptake')} kg CO2e/{pcf.get('declaredUnitOfMeasurement')}"
        )
    print(f"{page.total} footprint(s)")
    return EXIT_OK


async def _resync(
    config: HubConfig, since_ns: int | None, from_seq: int | None, gateway: str | None
) -> int:
    if since_ns is None and from_seq is None:
        print("give --since and/or --from-seq", file=sys.stderr)
        return EXIT_CONFIG
    body: dict[str, object] = {"requester": config.mqtt.client_id, "request_id": str(uuid.uuid4())}
    if since_ns is not None:
        body["since"] = iso_from_ns(since_ns)
    if from_seq is not None:
        body["from_seq"] = from_seq
    if gateway:
        body["gateway"] = gateway
    client = _client(config, f"{config.mqtt.client_id}-resync-{int(time.time())}")
    try:
        client.connect(config.mqtt.host, config.mqtt.port, keepalive=10)
    except OSError as exc:
        print(f"mqtt: cannot reach {config.mqtt.host}:{config.mqtt.port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    client.loop_start()
    try:
        for site in config.sites:
            info = client.publish(site.resync(), json.dumps(body), qos=1)
            info.wait_for_publish(timeout=10)
            print(f"asked on {site.resync()}: {json.dumps(body)}")
    finally:
        client.disconnect()
        client.loop_stop()
    return EXIT_OK


def _client(config: HubConfig, client_id: str) -> Any:
    import paho.mqtt.client as paho  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    if config.mqtt.username:
        client.username_pw_set(config.mqtt.username, read_secret(config.mqtt, "mqtt"))
    if config.mqtt.tls is not None:
        client.tls_set(ca_certs=str(config.mqtt.tls.ca_file) if config.mqtt.tls.ca_file else None)
    return client


def _leave(config: HubConfig) -> int:
    """Connect as this instance with a clean start and no session expiry, then disconnect: the
    broker drops the instance's session and its shared subscriptions, so no record is queued for
    an instance that will not come back (Mosquitto would otherwise hand it its share until the
    session expires). Run it with the instance stopped."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    client = _client(config, config.mqtt.client_id)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    try:
        client.connect(
            config.mqtt.host, config.mqtt.port, keepalive=10, clean_start=True,
            properties=properties,
        )  # fmt: skip
    except OSError as exc:
        print(f"mqtt: cannot reach {config.mqtt.host}:{config.mqtt.port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    client.loop_start()
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    print(f"session of {config.mqtt.client_id} ended at {config.mqtt.host}:{config.mqtt.port}")
    return EXIT_OK


def _hash_secret() -> int:
    from edge_agent.hub.api import hash_secret  # noqa: PLC0415

    secret = (
        sys.stdin.readline().strip()
        if not sys.stdin.isatty()
        else getpass.getpass("client secret: ")
    )
    if len(secret) < 16:
        print("a client secret needs at least 16 characters", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_secret(secret))
    return EXIT_OK
