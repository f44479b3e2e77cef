"""The configuration file's shape, as pydantic models.

Everything that comes from the YAML file is validated here, before any task runs. Unknown keys
are errors (``extra="forbid"``) so that a typo never passes silently. Messages written here
name the bad value and what was expected; :mod:`edge_agent.config.loader` prefixes the key path.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edge_agent.domain import MachineState, PointRole

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

ENERGY_UNITS_TO_KWH: dict[str, float] = {"Wh": 1e-3, "kWh": 1.0, "MWh": 1e3}
VOLUME_UNITS = ("m3", "Nm3")
MASS_UNITS = ("kg",)
LIQUID_UNITS = ("L",)
POWER_UNITS_TO_KW: dict[str, float] = {"W": 1e-3, "kW": 1.0, "MW": 1e3}
COUNTER_UNITS = (*ENERGY_UNITS_TO_KWH, *VOLUME_UNITS, *MASS_UNITS, *LIQUID_UNITS)
# Energy carriers bought from outside the site (docs/carbon.md). Compressed air and steam made
# on site are not carriers: their compressor or boiler is shared equipment whose own
# electricity or gas is allocated to the orders it serves. Other carriers: `carriers:`.
CARRIER_UNITS: dict[str, tuple[str, ...]] = {
    "electricity": ("kWh",),
    "city_gas": VOLUME_UNITS,
    "natural_gas": VOLUME_UNITS,
    "lpg": MASS_UNITS,
    "steam": ("kWh", "MWh"),  # bought steam / district heat, in energy units
    "heat": ("kWh", "MWh"),
}
# Gas volumes: temperature (°C) and absolute pressure (kPa) of the named reference conditions.
REFERENCE_CONDITIONS: dict[str, tuple[float, float]] = {
    "normal": (0.0, 101.325),  # Nm3, 0 °C (Japan's city-gas factors, DIN 1343)
    "standard": (15.0, 101.325),  # ISO 13443 / EU, 15 °C
    "25C": (25.0, 101.325),
}


def invalid(message: str, **context: Any) -> PydanticCustomError:
    """An error whose message already names the bad value (``str.format`` with ``context``).

    The "edge_agent" error type tells the loader to print the message as it is.
    """
    detail = message.format(**context) if context else message
    return PydanticCustomError("edge_agent", "{detail}", {"detail": detail})


def _check_id(value: str) -> str:
    if not ID_PATTERN.match(value):
        raise invalid(
            "{value!r} is not a valid id (letters, digits, '-' and '_', at most 64, "
            "no '/', '+', '#' or spaces because ids become MQTT topic levels)",
            value=value,
        )
    return value


def _check_address(value: int) -> int:
    if not 0 <= value <= 65535:
        raise invalid(
            "{value} is not a register address (0..65535); write the 0-based protocol address, "
            "e.g. 30343 in the maker's notation is input register 342",
            value=value,
        )
    return value


def _check_positive(value: float) -> float:
    if not value > 0:
        raise invalid("{value} is not a positive number", value=value)
    return value


Identifier = Annotated[str, AfterValidator(_check_id)]
RegisterAddress = Annotated[int, AfterValidator(_check_address)]
PositiveFloat = Annotated[float, AfterValidator(_check_positive)]

RegisterType = Literal["holding", "input", "coil", "discrete_input"]
DataType = Literal["uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"]
ByteOrder = Literal["big", "little"]

# Word/byte order in the names other tools use (for a 32-bit value whose big-endian bytes are
# A B C D) -> (word_order, byte_order). ``order: CDAB`` in a point is shorthand for the pair.
ORDER_SHORTHAND: dict[str, tuple[ByteOrder, ByteOrder]] = {
    "ABCD": ("big", "big"),
    "CDAB": ("little", "big"),
    "BADC": ("big", "little"),
    "DCBA": ("little", "little"),
}

REGISTER_COUNT: dict[str, int] = {
    "uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2,
    "uint64": 4, "int64": 4, "float64": 4,
}  # fmt: skip


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GasConditions(StrictModel):
    """Temperature and absolute pressure of a gas volume (metered or a factor's reference)."""

    temperature_c: Annotated[float, Field(gt=-273.15, le=200)]
    pressure_kpa: Annotated[float, Field(gt=0, le=10_000)]

    @property
    def kelvin(self) -> float:
        return self.temperature_c + 273.15


def _named_conditions(value: Any) -> Any:
    """``normal``, ``standard`` or ``25C`` as a shorthand for the conditions they name."""
    if isinstance(value, str):
        if value not in REFERENCE_CONDITIONS:
            raise invalid(
                "{value!r} is not a named reference condition (expected one of {known}, or "
                "{{temperature_c: …, pressure_kpa: …}})",
                value=value,
                known=", ".join(REFERENCE_CONDITIONS),
            )
        temperature, pressure = REFERENCE_CONDITIONS[value]
        return {"temperature_c": temperature, "pressure_kpa": pressure}
    return value


class PointBase(StrictModel):
    """What every meter point has, whatever the protocol."""

    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    role: PointRole = PointRole.OTHER
    # State points: raw value -> machine state (e.g. {0: off, 1: idle, 2: running}).
    states: dict[int, MachineState] | None = None
    # Counter points: the value (in ``unit``, after scale) at which the counter wraps to 0.
    # Integer registers default to their data type's range times ``scale``.
    counter_modulus: PositiveFloat | None = None
    # Gas counters in m3: the temperature and pressure the meter measures at (a meter without
    # temperature correction: the gas line's). Converted to the factor's reference conditions.
    metering_conditions: GasConditions | None = None

    _named = field_validator("metering_conditions", mode="before")(_named_conditions)

    @model_validator(mode="after")
    def _unit_fits_role(self) -> PointBase:
        if self.role is PointRole.ENERGY and self.unit not in COUNTER_UNITS:
            raise invalid(
                "unit {unit!r} is not a counter unit for role 'energy' (expected one of {allowed})",
                unit=self.unit,
                allowed=", ".join(COUNTER_UNITS),
            )
        if self.role is PointRole.POWER and self.unit not in POWER_UNITS_TO_KW:
            raise invalid(
                "unit {unit!r} is not a power unit for role 'power' (expected one of {allowed})",
                unit=self.unit,
                allowed=", ".join(POWER_UNITS_TO_KW),
            )
        if self.role is PointRole.STATE and not self.states:
            raise invalid("a point with role 'state' needs a 'states' value map, e.g. {0: off}")
        return self


class ModbusPoint(PointBase):
    # "register" in YAML; renamed here because pydantic reserves the attribute name.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    register_type: RegisterType = Field("holding", alias="register")
    address: RegisterAddress
    type: DataType = "uint16"
    word_order: ByteOrder = "big"  # order of 16-bit words in multi-register values
    byte_order: ByteOrder = "big"  # order of the two bytes inside each word

    @model_validator(mode="before")
    @classmethod
    def _order_shorthand(cls, data: Any) -> Any:
        """``order: CDAB`` -> ``word_order: little, byte_order: big`` (see ORDER_SHORTHAND)."""
        if not isinstance(data, dict) or "order" not in data:
            return data
        data = dict(data)
        fields = order_fields(data.pop("order"), data)
        return {**data, **fields}

    @property
    def order(self) -> str:
        """The configured word/byte order in the names other tools use (ABCD, CDAB, ...)."""
        return order_name(self.word_order, self.byte_order)

    @property
    def register_count(self) -> int:
        return 1 if self.register_type in ("coil", "discrete_input") else REGISTER_COUNT[self.type]

    @property
    def effective_counter_modulus(self) -> float | None:
        if self.counter_modulus is not None:
            return self.counter_modulus
        if self.role is not PointRole.ENERGY or self.type.startswith("float"):
            return None
        bits = 16 * REGISTER_COUNT[self.type]
        span: int = 2**bits if self.type.startswith("u") else 2 ** (bits - 1)
        return float(span) * abs(self.scale)

    @model_validator(mode="after")
    def _address_range_fits(self) -> ModbusPoint:
        last = self.address + self.register_count - 1
        if last > 65535:
            raise invalid(
                "{type} at address {address} needs {count} registers and runs past 65535",
                type=self.type,
                address=self.address,
                count=self.register_count,
            )
        return self


def order_name(word_order: str, byte_order: str) -> str:
    """``("little", "big")`` -> ``"CDAB"``."""
    return next(name for name, pair in ORDER_SHORTHAND.items() if pair == (word_order, byte_order))


def order_fields(shorthand: Any, explicit: dict[str, Any]) -> dict[str, ByteOrder]:
    """The ``word_order``/``byte_order`` pair an ``order`` shorthand stands for; an explicit
    ``word_order`` or ``byte_order`` beside it must agree (pure, raises the config error)."""
    name = shorthand.upper() if isinstance(shorthand, str) else shorthand
    if name not in ORDER_SHORTHAND:
        raise invalid(
            "order: {value!r} is not a word/byte order (expected ABCD, CDAB, BADC or DCBA; "
            "ABCD = most significant word and byte first)",
            value=shorthand,
        )
    word_order, byte_order = ORDER_SHORTHAND[name]
    for key, implied in (("word_order", word_order), ("byte_order", byte_order)):
        if key in explicit and explicit[key] != implied:
            raise invalid(
                "{key}: {value!r} conflicts with order {name} (which means word_order "
                "{word}, byte_order {byte}); remove one of the two",
                key=key,
                value=explicit[key],
                name=name,
                word=word_order,
                byte=byte_order,
            )
    return {"word_order": word_order, "byte_order": byte_order}


def _merge_order_override(merged: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A meter's own word/byte order replaces its profile's, in whichever notation each wrote
    it: ``order: CDAB`` over a profile's ``word_order: big`` is no conflict."""
    own = {"order", "word_order", "byte_order"} & set(override)
    if not own:
        return merged
    return {
        key: value
        for key, value in merged.items()
        if key not in {"order", "word_order", "byte_order"} - own
    }


class OpcUaPoint(PointBase):
    # "nsu=<namespace uri>;s=<id>" (preferred), "ns=<index>;i=<id>", or a browse path
    # "/Objects/2:Plant/2:Laser/2:Energy" resolved once per session.
    node: str = Field(min_length=1)


class MeterBase(StrictModel):
    id: Identifier
    description: str = ""
    interval_s: Annotated[float, Field(ge=0.1, le=3600)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    enabled: bool = True


class ModbusMeterBase(MeterBase):
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    profile: str | None = None
    points: dict[Identifier, ModbusPoint] = Field(default_factory=dict)
    # Registers between two points that may be read (and discarded) to save a request.
    max_gap_registers: Annotated[int, Field(ge=0, le=124)] = 8
    max_registers_per_read: Annotated[int, Field(ge=1, le=125)] = 125

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any, info: Any) -> Any:
        if not isinstance(data, dict) or data.get("profile") is None:
            return data
        from edge_agent.config.profiles import merge_profile  # noqa: PLC0415 (cycle)

        context = info.context or {}
        merged = merge_profile(data, context.get("profile_dirs", ()), context.get("profiles"))
        overrides = data.get("points")
        points = merged.get("points")
        if isinstance(overrides, dict) and isinstance(points, dict):
            points = dict(points)
            for name, spec in overrides.items():
                if isinstance(spec, dict) and isinstance(points.get(name), dict):
                    points[name] = _merge_order_override(points[name], spec)
            merged = {**merged, "points": points}
        return merged

    @model_validator(mode="after")
    def _has_points(self) -> ModbusMeterBase:
        if not self.points:
            raise invalid("a meter needs at least one point (or a 'profile')")
        return self


class ModbusTcpMeter(ModbusMeterBase):
    protocol: Literal["modbus_tcp"]
    host: str = Field(min_length=1)
    port: Annotated[int, Field(ge=1, le=65535)] = 502


class ModbusRtuMeter(ModbusMeterBase):
    protocol: Literal["modbus_rtu"]
    serial_port: str = Field(min_length=1)  # /dev/ttyUSB0, /dev/ttyAMA0, ...
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class OpcUaMeter(MeterBase):
    protocol: Literal["opcua"]
    endpoint: Identifier  # id of an entry in ``opcua_endpoints``
    points: dict[Identifier, OpcUaPoint]


MeterConfig = Annotated[
    ModbusTcpMeter | ModbusRtuMeter | OpcUaMeter, Field(discriminator="protocol")
]
ModbusMeter = ModbusTcpMeter | ModbusRtuMeter


class SecretRef(StrictModel):
    """A secret read from an environment variable or a file, never written in the YAML."""

    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if self.password_env and self.password_file:
            raise invalid("give either password_env or password_file, not both")
        return self


class OpcUaSecurity(StrictModel):
    policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: Path | None = None  # client certificate (DER or PEM)
    private_key: Path | None = None
    # Server certificates we trust: a file or a folder of files. Required when policy != None
    # unless ``trust_on_first_use`` is set explicitly (commissioning only, never production).
    trusted_server_certificates: Path | None = None
    trust_on_first_use: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise invalid(
                "policy {policy!r} and mode {mode!r} do not match: both 'None', or a policy "
                "with Sign / SignAndEncrypt",
                policy=self.policy,
                mode=self.mode,
            )
        if self.policy != "None":
            if self.certificate is None or self.private_key is None:
                raise invalid(
                    "policy {policy!r} needs 'certificate' and 'private_key'", policy=self.policy
                )
            if self.trusted_server_certificates is None and not self.trust_on_first_use:
                raise invalid(
                    "policy {policy!r} needs 'trusted_server_certificates' (a file or folder); "
                    "silent trust-on-first-use is off unless 'trust_on_first_use: true'",
                    policy=self.policy,
                )
        return self


class OpcUaEndpoint(SecretRef):
    id: Identifier
    url: Annotated[str, Field(pattern=r"^opc\.tcp://")]
    mode: Literal["read", "subscribe"] = "read"
    interval_s: Annotated[float, Field(ge=0.05, le=3600)] = 1.0  # read period or sampling interval
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 4.0
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity)
    username: str | None = None
    application_uri: str = "urn:edge-agent:client"


class SiteConfig(StrictModel):
    id: Identifier
    name: str = ""
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "JP"


class MeterRef(StrictModel):
    meter: Identifier
    point: Identifier | None = None  # default: the meter's energy point, else its power point


class DerivedState(StrictModel):
    """Machine state from active power: off < idle_above_kw <= idle < running_above_kw <= running."""

    meter: Identifier
    point: Identifier | None = None
    idle_above_kw: Annotated[float, Field(ge=0)]
    running_above_kw: Annotated[float, Field(gt=0)]
    hysteresis_kw: Annotated[float, Field(ge=0)] = 0.0
    min_dwell_s: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> DerivedState:
        if self.running_above_kw <= self.idle_above_kw:
            raise invalid(
                "running_above_kw ({running}) must be above idle_above_kw ({idle})",
                running=self.running_above_kw,
                idle=self.idle_above_kw,
            )
        return self


class StateSource(StrictModel):
    meter: Identifier
    point: Identifier


class EquipmentConfig(StrictModel):
    id: Identifier
    name: str = ""
    line: Identifier = "line-1"
    carrier: Identifier = "electricity"
    meters: list[MeterRef] = Field(min_length=1)
    max_power_kw: PositiveFloat
    state: StateSource | DerivedState | None = None
    overlap_split: Literal["equal", "quantity"] = "equal"
    # An order is final when every meter has a reading at or after its stop; after this
    # many seconds without one, the tail is estimated and flagged instead.
    final_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 30.0
    # An order without a stop for this long is closed at its last event and flagged
    # auto_closed, so a lost stop cannot take energy from every later order.
    max_order_duration_s: Annotated[float, Field(ge=1, le=90 * 86400)] = 86400.0

    @field_validator("meters", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"meter": item} if isinstance(item, str) else item for item in value]
        return value


class SharedEquipmentConfig(StrictModel):
    """Equipment whose energy no single order draws (compressor, HVAC, lighting, a line's main
    meter): allocated, interval by interval, to the orders active on the equipment it serves."""

    id: Identifier
    name: str = ""
    carrier: Identifier = "electricity"
    meters: list[MeterRef] = Field(min_length=1)
    # Sub-meters measured again by ``meters`` (a main meter): their energy is subtracted and the
    # remainder is the shared load (never below zero; flagged when they exceed the main).
    subtract: list[MeterRef] = Field(default_factory=list)
    serves: list[Identifier] = Field(min_length=1)  # equipment ids
    key: Literal["running_time", "direct_energy", "quantity", "equal"] = "running_time"
    # Allocation intervals, aligned to UTC; a divisor of a day.
    interval_s: Annotated[int, Field(ge=1, le=86400)] = 60
    max_power_kw: PositiveFloat = 1e6

    _shorthand = field_validator("meters", "subtract", mode="before")(
        lambda value: (
            [{"meter": i} if isinstance(i, str) else i for i in value]
            if isinstance(value, list)
            else value
        )
    )

    @field_validator("interval_s")
    @classmethod
    def _divides_a_day(cls, value: int) -> int:
        if 86400 % value:
            raise invalid(
                "{value} does not divide a day (86400 s): intervals are aligned to UTC "
                "midnight; use e.g. 60, 300 or 900",
                value=value,
            )
        return value


class StandardIntensity(StrictModel):
    """A configured standard: kWh (and kg CO2e) per good unit of a product on an equipment
    (``equipment_id`` omitted: for the whole lot)."""

    product_id: Annotated[str, Field(min_length=1, max_length=128)]
    equipment_id: Identifier | None = None
    kwh_per_unit: Annotated[float, Field(ge=0)]
    co2e_kg_per_unit: Annotated[float, Field(ge=0)] | None = None
    source: str = Field("configured", min_length=1)


class StandardsConfig(StrictModel):
    """Standard intensities (docs/configuration.md, section standards)."""

    items: list[StandardIntensity] = Field(default_factory=list)
    # Without a configured standard: the median of the last N lots of the product on the
    # equipment (0: off).
    derive_from_last_lots: Annotated[int, Field(ge=0, le=1000)] = 0
    # Records more than this many percent above their standard are flagged above_standard.
    flag_above_percent: Annotated[float, Field(ge=0)] = 10.0

    def configured(
        self, product_id: str | None, equipment_id: str | None
    ) -> StandardIntensity | None:
        for item in self.items:
            if item.product_id == product_id and item.equipment_id == equipment_id:
                return item
        return None


# The levels each topic template may use (a balance or status message covers the whole site).
TOPIC_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "mes_topic": ("prefix", "site"),
    "order_topic": ("prefix", "site", "line", "equipment", "lot_id"),
    "lot_topic": ("prefix", "site", "lot_id"),
    "balance_topic": ("prefix", "site"),
    "status_topic": ("prefix", "site"),
    "dead_letter_topic": ("prefix", "site"),
    "resync_topic": ("prefix", "site"),
}


class TlsConfig(StrictModel):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False


class MqttConfig(SecretRef):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None  # default: edge-agent-<site id>
    username: str | None = None
    tls: TlsConfig | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 86400
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 20
    topic_prefix: str = "factory"
    mes_topic: str = "{prefix}/{site}/mes/orders"
    order_topic: str = "{prefix}/{site}/{line}/{equipment}/lots/{lot_id}"
    lot_topic: str = "{prefix}/{site}/lots/{lot_id}"
    balance_topic: str = "{prefix}/{site}/energy-balance"  # placeholders: {prefix}, {site}
    status_topic: str = "{prefix}/{site}/edge-agent/status"
    dead_letter_topic: str | None = "{prefix}/{site}/mes/dead-letter"
    # Requests to re-publish stored records (the plant hub's re-synchronisation); None: off.
    resync_topic: str | None = "{prefix}/{site}/cmd/resync"

    @field_validator(*TOPIC_PLACEHOLDERS)
    @classmethod
    def _known_placeholders(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked here, not when the first record is published: an unknown {level} used to
        # leave an agent that said "online" and published nothing.
        if value is None:
            return value
        allowed = TOPIC_PLACEHOLDERS[info.field_name or ""]
        named = ", ".join(f"{{{name}}}" for name in allowed)
        try:
            fields = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise invalid(
                "{value!r} is not a topic template ({error}; write a literal brace as {{{{ or "
                "}}}}); placeholders: {named}",
                value=value,
                error=exc,
                named=named,
            ) from None
        used = {name for _, name, _, _ in fields if name is not None}
        unknown = sorted(used - set(allowed))
        if unknown:
            raise invalid(
                "{value!r} uses {unknown}: this topic may only use {named}",
                value=value,
                unknown=", ".join(f"{{{name}}}" for name in unknown),
                named=named,
            )
        if any(spec or conv for _, name, spec, conv in fields if name is not None):
            raise invalid(
                "{value!r}: a placeholder takes no '!' conversion or ':' format ({named})",
                value=value,
                named=named,
            )
        return value


class MesConfig(StrictModel):
    """Bounds and timings of the MES intake (docs/configuration.md, section mes)."""

    max_payload_bytes: Annotated[int, Field(ge=512, le=16 * 1024 * 1024)] = 64 * 1024
    max_json_depth: Annotated[int, Field(ge=2, le=64)] = 16
    max_id_length: Annotated[int, Field(ge=8, le=1024)] = 128  # event, order, lot, equipment
    max_text_length: Annotated[int, Field(ge=8, le=4096)] = 128  # product_id, unit
    max_extra_fields: Annotated[int, Field(ge=0, le=1000)] = 32
    # Every event of an order is replayed when it is judged: bound the work one order can cause.
    max_events_per_order: Annotated[int, Field(ge=10, le=100_000)] = 1000
    # ts must lie in [now - ts_max_age_s, now + ts_max_ahead_s] of the agent's clock.
    ts_max_age_s: Annotated[float, Field(gt=0, le=3650 * 86400)] = 30 * 86400.0
    ts_max_ahead_s: Annotated[float, Field(gt=0, le=365 * 86400)] = 86400.0
    # A stop/pause/resume/cancel whose start is unknown waits this long for it.
    hold_without_start_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 600.0
    # A message whose processing fails this often while the database works is dead-lettered.
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    batch_max_messages: Annotated[int, Field(ge=1, le=10_000)] = 500
    # MQTT 5 Receive Maximum: messages the broker may send before the agent acknowledges them
    # (after their commit). Mosquitto's own limit, max_inflight_messages (20), applies only to
    # clients that do not say: 20 per commit cannot keep up with a burst of ~1,000 messages/s.
    receive_maximum: Annotated[int, Field(ge=1, le=65_535)] = 1000


class OtherPointsStorage(StrictModel):
    """How often points of role ``other`` (voltages, currents, frequency: shown and stored, never
    attributed) reach the database; energy, power and state points are stored at every poll.
    On a gateway with an SD card, most of what the agent writes is raw samples."""

    # At most one stored sample per point per this many seconds; 0 stores every poll.
    every_s: Annotated[float, Field(ge=0, le=86400)] = 60.0
    # Also store a sample at once when its value moved by more than this (in the point's unit)
    # from the last stored one; 0 stores every change. None: only by ``every_s``.
    on_change: Annotated[float, Field(ge=0)] | None = None


class StoreConfig(StrictModel):
    path: Path = Path("edge-agent.db")
    retention_days: Annotated[float, Field(gt=0)] = 30.0
    outbox_budget_mb: Annotated[float, Field(gt=0)] = 512.0
    batch_max_samples: Annotated[int, Field(ge=1, le=100_000)] = 2000
    batch_max_delay_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # New samples are appended to a journal and moved into the table indexed per meter point
    # this often (fewer, fuller page writes: an SD card's wear; docs/performance.md).
    samples_merge_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    other_points: OtherPointsStorage = Field(default_factory=OtherPointsStorage)


class ClockConfig(StrictModel):
    """How the agent keeps time (docs/configuration.md, section clock)."""

    # Ask the kernel (adjtimex) whether the system clock is synchronised: records made while it
    # is not are flagged clock_unsynchronised. Off where the kernel's word means nothing.
    check_sync: bool = True
    # The system clock moving against the agent's time by more than this between two checks
    # (0.5 s apart) is a step; less is drift, which NTP slews.
    step_threshold_s: Annotated[float, Field(ge=0.1, le=3600)] = 1.0


class BalanceConfig(StrictModel):
    """Energy-balance records (docs/configuration.md, section balance)."""

    enabled: bool = True
    # Length of a period in seconds; periods are aligned to UTC midnight, so it divides a day.
    period_s: Annotated[int, Field(ge=1, le=86400)] = 3600
    # A period is computed this long after its end (late MES stops, final orders); default:
    # the longest equipment[].final_timeout_s.
    settle_s: Annotated[float, Field(ge=0, le=86400)] | None = None
    # Meters that serve no equipment and must not be added to the site (e.g. a main incomer
    # that measures the sub-meters' energy again).
    exclude_meters: list[Identifier] = Field(default_factory=list)

    @field_validator("period_s")
    @classmethod
    def _divides_a_day(cls, value: int) -> int:
        if 86400 % value:
            raise invalid(
                "{value} does not divide a day (86400 s): periods are aligned to UTC midnight; "
                "use e.g. 900, 3600 or 86400",
                value=value,
            )
        return value


FactorSet = Literal["location", "market"]


class EmissionFactor(StrictModel):
    """kg CO2e per carrier unit: a constant ``value`` or a ``table`` of validity intervals."""

    value: Annotated[float, Field(ge=0)] | None = None
    # CSV (relative to the configuration file): valid_from,valid_to,value — RFC 3339 instants
    # with an offset, half-open [valid_from, valid_to); e.g. an hourly grid intensity.
    table: Path | None = None
    unit: str  # kgCO2e per carrier unit, e.g. "kgCO2e/kWh"
    source: str = Field(min_length=1)
    version: str = Field(min_length=1)
    # Supplier- or contract-specific factor (PACT "primary"); a grid average is not.
    primary: bool = False
    # GHG Protocol Scope 2: "location" (grid average) or "market" (contracts, certificates,
    # supplier-specific, residual mix). Both can be configured side by side (a list).
    set: FactorSet = "location"
    # Where and when the factor's data come from (PACT data-quality ratings): an ISO 3166
    # country or subdivision code (JP, JP-27) or GLOBAL, and the year it describes.
    geography: Annotated[str, Field(pattern=r"^([A-Z]{2}(-[A-Z0-9]{1,3})?|GLOBAL)$")] | None = None
    reference_year: Annotated[int, Field(ge=1990, le=2100)] | None = None
    # Gas factors are per m3 at reference conditions; a metered volume is converted to them.
    reference_conditions: GasConditions | None = None

    _named = field_validator("reference_conditions", mode="before")(_named_conditions)

    @model_validator(mode="after")
    def _value_or_table(self) -> EmissionFactor:
        if (self.value is None) == (self.table is None):
            raise invalid("give either 'value' (a constant) or 'table' (a CSV file), not both")
        return self


class CarrierConfig(StrictModel):
    """A carrier the built-in list lacks: its counters' units (e.g. kerosene in L)."""

    units: list[Annotated[str, Field(min_length=1, max_length=16)]] = Field(min_length=1)


class HealthConfig(StrictModel):
    """The health and metrics HTTP endpoint (docs/configuration.md, section health)."""

    enabled: bool = False
    # Loopback by default: exposing it beyond the gateway is a deliberate choice.
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9108
    # /healthz turns 503 when one of these is exceeded.
    stale_meter_s: Annotated[float, Field(gt=0, le=86400)] = 60.0  # no good reading of a meter
    broker_unreachable_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    outbox_max_age_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 900.0  # oldest unpublished
    store_failing_s: Annotated[float, Field(gt=0, le=86400)] = 30.0  # samples not written
    event_loop_lag_s: Annotated[float, Field(gt=0, le=3600)] = 5.0


from edge_agent.config.footprint import FootprintConfig  # noqa: E402 (it imports StrictModel from here)


class AgentConfig(StrictModel):
    site: SiteConfig
    meters: list[MeterConfig] = Field(min_length=1)
    equipment: list[EquipmentConfig] = Field(default_factory=list)
    shared_equipment: list[SharedEquipmentConfig] = Field(default_factory=list)
    opcua_endpoints: list[OpcUaEndpoint] = Field(default_factory=list)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    mes: MesConfig = Field(default_factory=MesConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    standards: StandardsConfig = Field(default_factory=StandardsConfig)
    footprint: FootprintConfig = Field(default_factory=FootprintConfig)
    # Per carrier: one factor, or a list with one per set (location and market side by side).
    emission_factors: dict[Identifier, list[EmissionFactor]] = Field(default_factory=dict)
    # Which set's CO2e is a record's co2e_kg (the other is in co2e_by_set). Default: market
    # where a carrier has a market factor, else location (GHG Protocol Scope 2 dual reporting).
    report_set: FactorSet | Literal["auto"] = "auto"
    carriers: dict[Identifier, CarrierConfig] = Field(default_factory=dict)
    # The factor tables' rows (path -> (valid_from_ns, valid_to_ns, value)...), read by the
    # loader (edge_agent.config.factor_tables); not a configuration key.
    _factor_tables: dict[Path, tuple[tuple[int, int, float], ...]] = PrivateAttr(
        default_factory=dict
    )

    @property
    def factor_tables(self) -> dict[Path, tuple[tuple[int, int, float], ...]]:
        return self._factor_tables

    @field_validator("emission_factors", mode="before")
    @classmethod
    def _one_or_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return value

    def carrier_units(self, carrier: str) -> tuple[str, ...] | None:
        extra = self.carriers.get(carrier)
        return tuple(extra.units) if extra is not None else CARRIER_UNITS.get(carrier)

    def meter(self, meter_id: str) -> ModbusTcpMeter | ModbusRtuMeter | OpcUaMeter:
        for meter in self.meters:
            if meter.id == meter_id:
                return meter
        raise KeyError(meter_id)

    def sharing(self, equipment_id: str) -> list[SharedEquipmentConfig]:
        """The shared equipment that serves this equipment."""
        return [item for item in self.shared_equipment if equipment_id in item.serves]

    def equipment_by_id(self, equipment_id: str) -> EquipmentConfig:
        for item in self.equipment:
            if item.id == equipment_id:
                return item
        raise KeyError(equipment_id)

    @property
    def balance_settle_s(self) -> float:
        """Seconds after a balance period's end before it is computed."""
        if self.balance.settle_s is not None:
            return self.balance.settle_s
        return max((item.final_timeout_s for item in self.equipment), default=30.0)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-agent-{self.site.id}"
