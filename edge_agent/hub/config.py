"""The hub's configuration file (``edge-agent hub check -c hub.yaml``; docs/hub.md).

    hub_id: osaka-hub
    sites: [{id: osaka-plant, country: JP, topic_prefix: acme}]
    mqtt: {host: 127.0.0.1, port: 1883, share_group: edge-hub}
    store: {url: sqlite:///hub.db}            # or postgresql://hub@db.plant.example/hub
    api:
      port: 8443
      cert_file: tls/hub.pem
      key_file: tls/hub-key.pem
      clients:
        - {id: customer-a, secret_hash: "scrypt$...", products: [ENCL-400x300]}
    footprint: {...}                          # as the agent's (docs/carbon.md)
    product_period: month

Relative paths are relative to the file. Every problem names its key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from edge_agent.config.footprint import FootprintConfig
from edge_agent.config.loader import format_error
from edge_agent.config.models import (
    Identifier,
    SecretRef,
    SiteConfig,
    StrictModel,
    TlsConfig,
    invalid,
)
from edge_agent.config.yaml_loading import load_yaml_text
from edge_agent.errors import ConfigError

__all__ = ["ApiClient", "HubApiConfig", "HubConfig", "HubMqttConfig", "HubSite", "load_hub_config"]


class HubSite(StrictModel):
    """A site whose gateways publish to the broker (the agents' ``site`` and ``topic_prefix``)."""

    id: Identifier
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "JP"
    topic_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "acme"
    # The agents' mqtt.resync_topic ({prefix} and {site} filled in).
    resync_topic: Annotated[str, Field(min_length=1)] = "{prefix}/{site}/cmd/resync"

    def resync(self) -> str:
        return self.resync_topic.replace("{prefix}", self.topic_prefix).replace("{site}", self.id)

    def as_site(self) -> SiteConfig:
        return SiteConfig(id=self.id, country=self.country)


class HubMqttConfig(SecretRef):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: TlsConfig | None = None
    username: str | None = None
    # Unique per hub instance: the broker keeps its persistent session under this id.
    client_id: Annotated[str, Field(min_length=1, max_length=64)] = "edge-hub-1"
    # Instances with the same share group split the records ($share/<group>/...).
    share_group: Identifier = "edge-hub"
    # How long the broker keeps an absent instance's session (and queues its messages).
    session_expiry_s: Annotated[int, Field(ge=0, le=30 * 86400)] = 7 * 86400
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 20
    # MQTT 5 Receive Maximum: records the broker may send before the hub acknowledges them
    # (after their commit). Without it Mosquitto sends 20 (max_inflight_messages), one commit
    # per 20 records, and what overflows its queue in a burst is dropped.
    receive_maximum: Annotated[int, Field(ge=1, le=65_535)] = 1000


class HubStoreConfig(StrictModel):
    # sqlite:///relative/or/absolute.db, or postgresql://user@host:port/db (password from
    # password_env / password_file, never in the URL).
    url: str = "sqlite:///hub.db"
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _scheme(self) -> HubStoreConfig:
        if not self.url.startswith(("sqlite:///", "postgresql://")):
            raise invalid(
                "url {url!r} is not valid: expected sqlite:///FILE or postgresql://USER@HOST/DB",
                url=self.url,
            )
        if "@" in self.url and ":" in self.url.split("@", 1)[0].removeprefix("postgresql://"):
            raise invalid("put no password in the url: use password_env or password_file")
        return self


class EventsCredentials(SecretRef):
    """The OAuth 2 client credentials a customer gave this hub for its own host."""

    client_id: Annotated[str, Field(min_length=1)]


class ApiClient(StrictModel):
    """A customer: OAuth 2 client credentials and the products shared with it."""

    id: Annotated[str, Field(min_length=1, max_length=128)]
    # `edge-agent hub hash-secret` makes it; the secret itself is never stored.
    secret_hash: Annotated[str, Field(pattern=r"^scrypt\$")]
    products: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # The customer's own PACT events endpoint (https): new footprints of its products are
    # announced there (PublishedEvent), with the credentials it gave this hub.
    events_url: Annotated[str, Field(pattern=r"^https://")] | None = None
    events_credentials: EventsCredentials | None = None


class HubApiConfig(StrictModel):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8443
    cert_file: Path | None = None  # HTTPS only: both are required to serve
    key_file: Path | None = None
    token_ttl_s: Annotated[int, Field(ge=60, le=86400)] = 3600
    # Key that signs the access tokens, shared by every instance behind one load balancer
    # (else $EDGE_HUB_TOKEN_KEY / $EDGE_HUB_TOKEN_KEY_FILE, else a random per-process key).
    token_key_file: Path | None = None
    # This API's base URL as customers reach it (the source of the events it sends).
    public_url: Annotated[str, Field(pattern=r"^https://")] | None = None
    clients: list[ApiClient] = Field(default_factory=list)


class HubConfig(StrictModel):
    hub_id: Identifier = "edge-hub"
    sites: list[HubSite] = Field(min_length=1)
    mqtt: HubMqttConfig = Field(default_factory=HubMqttConfig)
    store: HubStoreConfig = Field(default_factory=HubStoreConfig)
    api: HubApiConfig = Field(default_factory=HubApiConfig)
    footprint: FootprintConfig = Field(default_factory=FootprintConfig)
    # Product footprints over calendar periods (UTC), besides one per lot; None: lots only.
    product_period: Literal["month", "quarter", "year"] | None = "month"
    # How often to look for holes in the gateways' record sequences; a hole still there at the
    # next look is asked for again (re-sync). Also looked for once at start-up.
    resync_check_s: Annotated[float, Field(ge=1, le=86400)] = 60.0

    def site(self, site_id: str) -> HubSite | None:
        return next((site for site in self.sites if site.id == site_id), None)


def _resolve(config: HubConfig, base: Path) -> HubConfig:
    def rel(path: Path | None) -> Path | None:
        return None if path is None or path.is_absolute() else base / path

    api = config.api.model_copy(
        update={
            "cert_file": rel(config.api.cert_file) or config.api.cert_file,
            "key_file": rel(config.api.key_file) or config.api.key_file,
            "token_key_file": rel(config.api.token_key_file) or config.api.token_key_file,
        }
    )
    store = config.store
    if store.url.startswith("sqlite:///"):
        target = Path(store.url.removeprefix("sqlite:///"))
        if not target.is_absolute():
            store = store.model_copy(update={"url": f"sqlite:///{base / target}"})
    return config.model_copy(update={"api": api, "store": store})


def parse_hub_config(data: Any, base_dir: Path) -> HubConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            [f"(top level): expected a mapping of sections, got {type(data).__name__}"]
        )
    try:
        config = HubConfig.model_validate(data)
    except ValidationError as exc:
        found = [format_error(error) for error in exc.errors()]
        raise ConfigError(sorted(set(found), key=found.index)) from None
    problems: list[str] = []
    ids = [client.id for client in config.api.clients]
    for index, client_id in enumerate(ids):
        if ids.index(client_id) != index:
            problems.append(f"api.clients[{index}].id: {client_id!r} is already used")
    sites = [site.id for site in config.sites]
    for index, site_id in enumerate(sites):
        if sites.index(site_id) != index:
            problems.append(f"sites[{index}].id: {site_id!r} is already used")
    if (config.api.cert_file is None) != (config.api.key_file is None):
        problems.append("api: give both cert_file and key_file (the API serves HTTPS only)")
    for site in config.sites:
        problems += config.footprint.problems(site.as_site())
    if problems:
        raise ConfigError(problems)
    return _resolve(config, base_dir)


def load_hub_config(path: Path) -> HubConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration file ({exc.strerror})"]) from exc
    return parse_hub_config(load_yaml_text(text), path.resolve().parent)
