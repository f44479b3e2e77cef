"""A local Mosquitto for tests, benchmarks and the demo: own config, loopback, free port.

Persistence is on (in the instance's own folder) so persistent sessions and queued QoS 1
messages survive ``stop()`` / ``start()`` on the same port — what broker-restart tests need.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise RuntimeError(
            "mosquitto is not installed: run `sudo apt-get install -y mosquitto` "
            "(or ./tasks.sh test as root, which installs it)"
        )
    return found


class LocalMosquitto:
    def __init__(
        self,
        port: int | None = None,
        folder: Path | None = None,
        *,
        max_queued_messages: int | None = 100_000,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``max_queued_messages=None`` keeps Mosquitto's default (1,000 per client).
        ``tls``: (CA, server certificate, server key) files: the listener speaks MQTT over TLS
        only (see ``simulators.tls.make_pki``)."""
        self.host = HOST
        self.tls = tls
        self.max_queued_messages = max_queued_messages
        self.port = port or free_port()
        self._own_folder = folder is None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="edge-agent-mosquitto-"))
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalMosquitto:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def start(self, timeout_s: float = 10.0) -> None:
        config = self.folder / "mosquitto.conf"
        # As root, mosquitto drops to the "mosquitto" user, which cannot write our private
        # folder: persistence would silently fail and sessions would not survive a restart.
        user = "user root\n" if os.geteuid() == 0 else ""
        config.write_text(
            user
            + f"listener {self.port} {self.host}\n"
            + (
                f"cafile {self.tls[0]}\ncertfile {self.tls[1]}\nkeyfile {self.tls[2]}\n"
                if self.tls is not None
                else ""
            )
            + "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.folder}/\n"
            "autosave_interval 1\n"
            "sys_interval 1\n"  # $SYS counters (e.g. messages dropped) every second
            + (
                f"max_queued_messages {self.max_queued_messages}\n"
                if self.max_queued_messages is not None
                else ""
            )
            + "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        log_file = (self.folder / "mosquitto.log").open("ab")
        self._process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(config)], stdout=log_file, stderr=log_file
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}: "
                    + (self.folder / "mosquitto.log").read_text(errors="replace")[-2000:]
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout_s} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Mosquitto on 127.0.0.1 until Ctrl-C")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    with LocalMosquitto(args.port) as broker:
        print(f"mosquitto listening on {broker.host}:{broker.port} (data in {broker.folder})")
        try:
            while broker.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
