"""Serving the API: uvicorn, HTTPS only (PACT: "MUST offer its actions over HTTPS only").

Without ``api.cert_file`` and ``api.key_file`` nothing is served: :class:`ApiServer` refuses
to start with one ConfigError naming both keys. TLS 1.2 is the minimum. Plain HTTP sent to the
port fails the TLS handshake: no request is ever read from an unencrypted connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette

from edge_agent.errors import ConfigError
from edge_agent.hub.config import HubApiConfig

__all__ = ["ApiServer", "serve", "tls_problems"]

log = logging.getLogger(__name__)


def tls_problems(api: HubApiConfig) -> list[str]:
    """What keeps the API from serving HTTPS (empty: nothing)."""
    if api.cert_file is None or api.key_file is None:
        return [
            "api.cert_file, api.key_file: the PACT API is served over HTTPS only; give both "
            "(the server's certificate chain and its private key, PEM files)"
        ]
    problems = [
        f"api.{key}: {path} is not a readable file"
        for key, path in (("cert_file", api.cert_file), ("key_file", api.key_file))
        if not Path(path).is_file()
    ]
    if problems:
        return problems
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            str(api.cert_file), str(api.key_file)
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        return [
            f"api.cert_file, api.key_file: {api.cert_file} and {api.key_file} are not a "
            f"certificate and its private key ({exc})"
        ]
    return []


def _tls_context(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the hub process owns SIGTERM and SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """The API on ``api.host``:``api.port`` (0: a free port, see :attr:`port`)."""

    def __init__(self, app: Starlette, api: HubApiConfig, *, log_level: str = "info") -> None:
        problems = tls_problems(api)
        if problems:
            raise ConfigError(problems)
        self.api = api
        config = uvicorn.Config(
            app,
            host=api.host,
            port=api.port,
            ssl_certfile=str(api.cert_file),
            ssl_keyfile=str(api.key_file),
            ssl_context_factory=_tls_context,
            log_level=log_level,
            lifespan="on",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.port = api.port

    async def start(self) -> int:
        """Listen; returns the port. Raises OSError when the address cannot be bound."""
        self._task = asyncio.create_task(self._run(), name="pact-api")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise OSError(f"the API did not start on {self.api.host}:{self.api.port}")
            await asyncio.sleep(0.02)
        sockets = [sock for server in self._server.servers for sock in server.sockets or ()]
        inet = [sock for sock in sockets if sock.family in (socket.AF_INET, socket.AF_INET6)]
        self.port = int(inet[0].getsockname()[1]) if inet else self.api.port
        log.info("PACT API on https://%s:%d", self.api.host, self.port)
        return self.port

    async def _run(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:  # uvicorn exits when it cannot bind or start the app
            raise OSError(
                f"the API cannot serve on {self.api.host}:{self.api.port} (see the log above)"
            ) from exc

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(OSError):
            await self._task
        self._task = None


_UVICORN_LEVELS = ("critical", "error", "warning", "info", "debug")


async def serve(app: FastAPI, api: HubApiConfig) -> None:
    """Serve until cancelled (then shut down gracefully) or until the server fails.
    Raises ConfigError before anything is served when the TLS files are not given."""
    # uvicorn's own loggers follow the process's level (a demo at WARNING stays quiet).
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    server = ApiServer(app, api, log_level=level if level in _UVICORN_LEVELS else "info")
    await server.start()
    try:
        await server.wait()
    finally:
        await server.stop()
