"""A throw-away PostgreSQL server for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a
temporary folder, listening on 127.0.0.1 only (a free port) and on a unix socket in that folder,
trust authentication; stopped and removed afterwards.

Binaries: ``initdb``, ``pg_ctl`` and ``postgres`` from one folder — the one ``initdb`` on PATH
resolves to, else the newest ``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql``).
PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user, or when
there is none as a system user ``edge-agent-test`` created once (``useradd --system``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
SUPERUSER = "postgres"
ROLE = "hub"  # the role the stores connect as (owns each test database, not a superuser)
TEST_USER = "edge-agent-test"
NEEDED = ("initdb", "pg_ctl", "postgres")


def _version(folder: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin$", folder)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def postgres_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None when PostgreSQL is absent."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [
        Path(folder)
        for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    ]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in NEEDED):
            return folder
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as (None: not root, run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in (SUPERUSER, TEST_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(TEST_USER)


def _reachable_tempdir() -> str:
    """The system's temporary folder if any user can reach into it, else /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if all(os.stat(p).st_mode & 0o001 for p in (base, *base.parents)):
        return str(base)
    return "/tmp"


class LocalPostgres:
    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        """``durable=False`` (tests): no fsync — nothing needs to survive a crash of the test
        server; ``True`` (benchmarks): PostgreSQL's defaults."""
        self.bindir = bindir
        self.durable = durable
        self.host = HOST
        self.port = free_port()
        self.user = _server_user()
        self.folder = Path(tempfile.mkdtemp(prefix="edge-agent-pg-", dir=_reachable_tempdir()))
        self.data = self.folder / "data"
        self.sockets = self.folder / "sockets"
        self.log = self.folder / "postgres.log"
        self._started = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        user = self.user
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],  # drop root's groups
        )

    def start(self) -> None:
        self.sockets.mkdir()
        if self.user is not None:
            for path in (self.folder, self.sockets):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        try:
            self._run(
                "initdb", "-D", str(self.data), "--auth=trust", f"--username={SUPERUSER}",
                "--encoding=UTF8", "--no-locale", "--no-sync",
            )  # fmt: skip
            options = [
                f"-p {self.port}",
                f"-k {self.sockets}",
                f"-c listen_addresses={HOST}",
                "-c max_connections=200",
            ]
            if not self.durable:
                options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", " ".join(options),
                "-w", "-t", "60", "start",
            )  # fmt: skip
            self._started = True
        except subprocess.CalledProcessError as exc:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self.close()
            raise RuntimeError(
                f"PostgreSQL did not start: {exc.cmd[0]} said {exc.stderr.strip()}\n{log}"
            ) from exc

    def close(self) -> None:
        if self._started:
            with contextlib.suppress(subprocess.SubprocessError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            self._started = False
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def url(self, database: str, user: str = ROLE) -> str:
        """The hub's ``store.url`` for one database (no password: trust authentication)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    async def _admin(self, *statements: str) -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(
            host=self.host, port=self.port, user=SUPERUSER, database="postgres"
        )
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def create_database(self) -> str:
        """A new empty database owned by the (non-superuser) role ``hub``."""
        name = f"hub_{uuid.uuid4().hex[:12]}"
        await self._admin(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
            f"THEN CREATE ROLE {ROLE} LOGIN; END IF; END $$",
            f'CREATE DATABASE "{name}" OWNER {ROLE}',
        )
        return name

    async def drop_database(self, name: str) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
