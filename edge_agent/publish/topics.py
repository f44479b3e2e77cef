"""MQTT topic names from the configured templates (pure).

Ids from the configuration are already restricted to topic-safe characters. Lot and order ids
come from the MES and may contain anything: '/', '+' and '#' (and NUL) are replaced with '_' so a
lot id can never add topic levels or act as a wildcard.
"""

from __future__ import annotations

from edge_agent.config.models import AgentConfig, EquipmentConfig

_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\x00": "_"})


def topic_level(value: str) -> str:
    return value.translate(_UNSAFE) or "_"


def _fill(template: str, config: AgentConfig, **levels: str) -> str:
    values = {"prefix": config.mqtt.topic_prefix, "site": config.site.id}
    values.update({key: topic_level(value) for key, value in levels.items()})
    return template.format(**values)


def order_topic(config: AgentConfig, equipment: EquipmentConfig, lot_id: str) -> str:
    return _fill(
        config.mqtt.order_topic, config, line=equipment.line, equipment=equipment.id, lot_id=lot_id
    )


def lot_topic(config: AgentConfig, lot_id: str) -> str:
    return _fill(config.mqtt.lot_topic, config, lot_id=lot_id)


def balance_topic(config: AgentConfig) -> str:
    return _fill(config.mqtt.balance_topic, config)


def mes_topic(config: AgentConfig) -> str:
    return _fill(config.mqtt.mes_topic, config)


def status_topic(config: AgentConfig) -> str:
    return _fill(config.mqtt.status_topic, config)


def resync_topic(config: AgentConfig) -> str | None:
    template = config.mqtt.resync_topic
    return _fill(template, config) if template else None


def dead_letter_topic(config: AgentConfig) -> str | None:
    template = config.mqtt.dead_letter_topic
    return _fill(template, config) if template else None
