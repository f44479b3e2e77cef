"""The systemd notification protocol (``Type=notify``, ``WatchdogSec=``), for the service shell.

One datagram of ``KEY=value`` lines to the socket named by ``$NOTIFY_SOCKET`` (sd_notify(3)).
Written here rather than taken from a package: the protocol is this one datagram, the pure
Python packages for it are unmaintained, and systemd's own bindings need libsystemd's headers
to build on a gateway. Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class ServiceNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading '@' and addressed with a NUL.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and ours else None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (e.g. ``READY="1"``); False when not sent."""
        if not self._address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            if not self._failed:  # once: a watchdog ping a second would flood the journal
                log.warning("systemd notification to %s failed: %s", self._address, exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status)

    def reloading(self) -> bool:
        return self.notify(RELOADING="1", STATUS="reloading the configuration")

    def stopping(self) -> bool:
        return self.notify(STOPPING="1", STATUS="stopping")

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")
