"""Configuration: pydantic models and the YAML loader."""

from edge_agent.config.loader import (
    attributed_point_name,
    load_config,
    parse_config,
    read_secret,
    shaping_power_point,
)
from edge_agent.config.models import (
    AgentConfig,
    EmissionFactor,
    EquipmentConfig,
    MesConfig,
    ModbusMeter,
    ModbusPoint,
    ModbusRtuMeter,
    ModbusTcpMeter,
    MqttConfig,
    OpcUaEndpoint,
    OpcUaMeter,
    OpcUaPoint,
    StoreConfig,
)

__all__ = [
    "AgentConfig",
    "EmissionFactor",
    "EquipmentConfig",
    "MesConfig",
    "ModbusMeter",
    "ModbusPoint",
    "ModbusRtuMeter",
    "ModbusTcpMeter",
    "MqttConfig",
    "OpcUaEndpoint",
    "OpcUaMeter",
    "OpcUaPoint",
    "StoreConfig",
    "attributed_point_name",
    "load_config",
    "parse_config",
    "read_secret",
    "shaping_power_point",
]
