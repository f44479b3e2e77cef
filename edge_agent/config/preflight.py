"""What `run` needs from the machine at start-up, checked before anything starts.

The configuration can be valid and the agent still unable to work: a secret file missing, an
environment variable unset, a TLS file unreadable, a store folder it cannot write. Found only
when the broker connection or the database is opened, such a problem used to leave a process
that looked alive and did nothing. ``edge-agent check`` and ``edge-agent run`` both call
:func:`preflight`; each problem is one line naming the key and the value.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from edge_agent.config.loader import read_secret
from edge_agent.config.models import AgentConfig, SecretRef, TlsConfig
from edge_agent.errors import ConfigError


def preflight(config: AgentConfig) -> list[str]:
    """Problems that would stop ``run`` (empty: none found)."""
    problems: list[str] = []
    if config.mqtt.username:
        problems += _secret(config.mqtt, "mqtt")
    if config.mqtt.tls is not None:
        problems += _tls(config.mqtt.tls, "mqtt.tls")
    for index, endpoint in enumerate(config.opcua_endpoints):
        path = f"opcua_endpoints[{index}]"
        if endpoint.username:
            problems += _secret(endpoint, path)
        security = endpoint.security
        for name in ("certificate", "private_key", "trusted_server_certificates"):
            value = getattr(security, name)
            if value is not None and not os.access(value, os.R_OK):
                problems.append(f"{path}.security.{name}: cannot read {value}")
    problems += _store(config.store.path)
    return problems


def _secret(ref: SecretRef, what: str) -> list[str]:
    try:
        read_secret(ref, what)
    except ConfigError as exc:
        return list(exc.problems)
    if not ref.password_env and not ref.password_file:
        return [f"{what}: a username is set but no password_env or password_file"]
    return []


def _tls(tls: TlsConfig, what: str) -> list[str]:
    """Load the files as the MQTT client will (unreadable or not PEM: the same error now)."""
    problems = []
    for name in ("ca_file", "cert_file", "key_file"):
        value: Path | None = getattr(tls, name)
        if value is not None and not value.is_file():
            problems.append(f"{what}.{name}: {value} is not a readable file")
    if problems:
        return problems
    context = ssl.create_default_context()
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{what}.ca_file: {tls.ca_file} holds no usable certificate ({exc})")
    if tls.key_file is not None and tls.cert_file is None:
        problems.append(f"{what}.key_file: given without cert_file")
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            problems.append(
                f"{what}.cert_file: {tls.cert_file} with key_file {tls.key_file} does not load "
                f"as a certificate and its key ({exc})"
            )
    return problems


def _store(path: Path) -> list[str]:
    """The database file (or the folder it will be created in) must be writable: tried, not
    guessed from permission bits (root passes those, a read-only file system does not)."""
    try:
        if path.exists():
            if not path.is_file():
                return [f"store.path: {path} exists and is not a file"]
            with path.open("r+b"):
                pass
            folder = path.parent  # SQLite writes its journal (-wal, -shm) next to the file
        else:
            folder = path.parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            if not folder.is_dir():
                return [f"store.path: {path} cannot be created: {folder} is not a folder"]
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return [f"store.path: {path} is not writable ({exc.strerror or exc})"]
    return []
