"""MqttLink's PUBACK bookkeeping, driven through paho's callbacks (no broker: what is tested is
which message a PUBACK is taken for)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import parse_config
from edge_agent.publish.link import MqttLink


def link(tmp_path: Path, acks: list[tuple[int, int]]) -> MqttLink:
    config = parse_config(
        {
            "site": {"id": "s1"},
            "meters": [
                {"id": "m1", "protocol": "modbus_tcp", "host": "127.0.0.1", "profile": "sdm630"}
            ],
        },
        tmp_path,
    )
    return MqttLink(config, "unit", on_acks=acks.extend)


def puback(link: MqttLink, mid: int, code: int = 0) -> None:
    reason: Any = ReasonCode(PacketTypes.PUBACK, identifier=code)
    link._on_publish(link._client, None, mid, reason, None)


async def test_a_resent_message_s_puback_is_not_taken_for_a_later_message(tmp_path: Path) -> None:
    """After a disconnect paho re-sends what was in flight under the same ids. Those PUBACKs
    belong to nobody; a new message that gets one of these ids once paho has freed it must
    still wait for its own PUBACK."""
    acks: list[tuple[int, int]] = []
    subject = link(tmp_path, acks)
    subject._loop = asyncio.get_running_loop()
    subject._tracked.update({7, 8})  # two records in flight
    subject._fail_pending("disconnected")
    puback(subject, 7)  # the re-sent message 7, acknowledged after the reconnect
    await asyncio.sleep(0)
    assert acks == []  # nobody's: the drain gave these records up at the disconnect
    assert 7 not in subject._early_acks  # so a new message 7 is not acknowledged by it
    subject._tracked.add(7)  # a new record gets id 7 (what publish_tracked registers)
    await asyncio.sleep(0)
    assert acks == []
    puback(subject, 7)  # its own PUBACK
    await asyncio.sleep(0)
    assert acks == [(7, 0)]


async def test_a_puback_before_its_registration_is_kept_for_it(tmp_path: Path) -> None:
    """A PUBACK for an id nobody registered yet (it raced the registration) is parked, with
    its reason code (a refusal), for the message about to be registered; it does not count as
    the PUBACK of a message already waiting."""
    acks: list[tuple[int, int]] = []
    subject = link(tmp_path, acks)
    subject._loop = asyncio.get_running_loop()
    puback(subject, 3, code=0x87)  # not authorised
    assert subject._early_acks == {3: 0x87}
    subject._tracked.add(4)
    puback(subject, 4)
    await asyncio.sleep(0)
    assert acks == [(4, 0)]
