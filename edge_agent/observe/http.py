"""``/healthz`` and ``/metrics`` over HTTP (``health.enabled``; loopback by default).

Served by the standard library's WSGI server in a thread of its own — the Prometheus client's
own exposition uses the same — so a slow scraper never holds the event loop. ``/metrics`` is the
Prometheus client's WSGI application; ``/healthz`` reads the monitor's latest judgement.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from edge_agent.observe.monitor import Monitor


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the journal."""


class HealthServer:
    def __init__(self, monitor: Monitor, host: str, port: int) -> None:
        self._monitor = monitor
        self._metrics = make_wsgi_app(monitor.registry)
        try:
            self._server = make_server(
                host, port, self._app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(
                [f"health.port: cannot listen on {host}:{port} ({exc.strerror or exc})"]
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Blocking (up to one poll interval of the server): call from a worker thread."""
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path == "/healthz":
            return self._healthz(start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /healthz or /metrics\n"]

    def _healthz(self, start_response: StartResponse) -> Iterable[bytes]:
        snapshot, reasons = self._monitor.snapshot, self._monitor.reasons
        body: dict[str, object]
        if snapshot is None:
            status, body = "503 Service Unavailable", {"status": "starting", "reasons": []}
        elif reasons:
            body = {
                "status": "failing",
                "reasons": [{"code": r.code, "detail": r.detail} for r in reasons],
            }
            status = "503 Service Unavailable"
        else:
            status, body = "200 OK", {"status": "ok", "reasons": []}
        payload = json.dumps(body).encode()
        start_response(
            status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
        )
        return [payload]
