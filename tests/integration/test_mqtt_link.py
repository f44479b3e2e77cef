"""MqttLink against a real Mosquitto: paho runs on the event loop (no network thread), so the
link must connect, reconnect after a broker restart, keep alive and speak TLS by itself."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig, parse_config
from edge_agent.publish.link import ConnectionLost, MqttLink
from simulators.broker import LocalMosquitto
from simulators.tls import make_pki


def config(broker: LocalMosquitto, tmp_path: Path, **mqtt: Any) -> AgentConfig:
    return parse_config(
        {
            "site": {"id": "s1"},
            "meters": [
                {"id": "m1", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "sdm630"}
            ],
            "mqtt": {"host": broker.host, "port": broker.port, **mqtt},
        },
        tmp_path,
    )


async def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout_s:g} s")


async def round_trip(link: MqttLink, count: int, size: int) -> list[bytes]:
    """Publish ``count`` payloads of ``size`` bytes to the link's own subscription, each
    awaited until PUBACKed; the payloads received back, in order."""
    sent = [bytes([i % 256]) * size for i in range(count)]
    await asyncio.gather(*(link.publish("t/loop", payload) for payload in sent))
    received: list[bytes] = []
    async with asyncio.timeout(30):
        while len(received) < count:
            received.append((await link.messages.get()).payload)
    assert sorted(received) == sorted(sent)
    return received


async def test_over_tls_large_messages_all_arrive(tmp_path: Path) -> None:
    """TLS: decrypted bytes the selector cannot see must be read too. 16 KB messages, two
    hundred at once, all PUBACKed and all received back; the server certificate is checked
    against the test CA."""
    pki = make_pki(tmp_path / "pki")
    with LocalMosquitto(tls=(pki.ca_file, pki.cert_file, pki.key_file)) as broker:
        cfg = config(broker, tmp_path, tls={"ca_file": str(pki.ca_file)})
        link = MqttLink(cfg, "link-tls", subscriptions=[("t/#", 1)])
        sender = MqttLink(cfg, "link-tls-sender")
        await link.start()
        await sender.start()
        try:
            await asyncio.wait_for(link.connected.wait(), 15)
            await asyncio.wait_for(sender.connected.wait(), 15)
            await asyncio.sleep(0.3)  # the SUBSCRIBE went out with the CONNACK
            await round_trip(link, 200, 16 * 1024)
            # Small messages from another client while this one sends nothing: paho reads one
            # packet per wake-up then, and several may sit decrypted in the TLS buffer.
            for i in range(500):
                assert sender.publish_nowait("t/small", str(i).encode())
            received: list[int] = []
            async with asyncio.timeout(30):
                while len(received) < 500:
                    received.append(int((await link.messages.get()).payload))
            assert received == list(range(500))
        finally:
            await sender.stop()
            await link.stop()


async def test_a_broker_that_is_not_there_is_retried_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens yet: each failed attempt is a WARNING; once the broker is up the link
    connects on its own (first retry after 1 s, then 2 s, ...)."""
    broker = LocalMosquitto()
    cfg = config(broker, tmp_path)
    link = MqttLink(cfg, "link-late", subscriptions=[("t/#", 1)])
    caplog.set_level(logging.WARNING, logger="edge_agent.publish.link")
    await link.start()
    try:
        await wait_until(
            lambda: "cannot connect" in caplog.text, 10, "a logged failed connection attempt"
        )
        with pytest.raises(ConnectionLost):
            await link.publish("t/x", b"not connected")
        with broker:
            await asyncio.wait_for(link.connected.wait(), 15)
            await asyncio.sleep(0.3)
            await round_trip(link, 5, 100)
    finally:
        await link.stop()


async def test_reconnects_after_a_broker_restart(mosquitto: LocalMosquitto, tmp_path: Path) -> None:
    """The broker goes away and comes back on the same port: the link notices, fails what is
    awaited, connects again, subscribes again and works."""
    cfg = config(mosquitto, tmp_path, keepalive_s=5)
    link = MqttLink(cfg, "link-restart", subscriptions=[("t/#", 1)])
    await link.start()
    try:
        await asyncio.wait_for(link.connected.wait(), 15)
        await asyncio.sleep(0.3)
        await round_trip(link, 10, 1000)
        mosquitto.stop()
        await wait_until(lambda: not link.connected.is_set(), 10, "the loss noticed")
        mosquitto.start()
        await wait_until(lambda: link.connects == 2, 20, "connected again")
        await asyncio.sleep(0.3)
        await round_trip(link, 10, 1000)
    finally:
        await link.stop()


async def test_stop_ends_the_session_cleanly_and_quickly(
    mosquitto: LocalMosquitto, tmp_path: Path
) -> None:
    """stop() sends DISCONNECT (the broker does not publish the Will) and closes the socket."""
    cfg = config(mosquitto, tmp_path)
    watcher = MqttLink(cfg, "link-watcher", subscriptions=[("will/#", 1)])
    link = MqttLink(cfg, "link-will", will=("will/link", b"gone"))
    await watcher.start()
    await link.start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), 15)
        await asyncio.wait_for(link.connected.wait(), 15)
        began = asyncio.get_running_loop().time()
        await link.stop()
        assert asyncio.get_running_loop().time() - began < 1.0
        assert link._client.socket() is None  # closed by paho after its DISCONNECT
        await asyncio.sleep(1.0)
        assert watcher.messages.empty(), "a clean stop published the Will"
    finally:
        await watcher.stop()
