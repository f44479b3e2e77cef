"""Hub fixtures: a real PostgreSQL server (one per test run) and ``hub_store``, a fresh store
on SQLite and on PostgreSQL (a new database per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.hub.config import HubStoreConfig
from edge_agent.hub.store import SqlHubStore, open_hub_store
from simulators.tls import Pki, make_pki
from tests.hub.api_support import (
    SECRET_A,
    RunningApi,
    Seeded,
    access_token,
    api_client,
    seed,
    sqlite_store,
)
from tests.hub.postgres import LocalPostgres, postgres_bindir

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed: no initdb, pg_ctl and postgres on PATH or in "
            "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
        )
    with LocalPostgres(bindir) as server:
        yield server


@pytest.fixture(params=BACKENDS)
async def hub_store_config(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[HubStoreConfig]:
    """The configuration of a new, empty database on each backend."""
    if request.param == "sqlite":
        yield HubStoreConfig(url=f"sqlite:///{tmp_path / 'hub.db'}")
        return
    server: LocalPostgres = request.getfixturevalue("postgres_server")
    name = await server.create_database()
    yield HubStoreConfig(url=server.url(name))
    await server.drop_database(name)


@pytest.fixture
async def hub_store(hub_store_config: HubStoreConfig) -> AsyncIterator[SqlHubStore]:
    store = await open_hub_store(hub_store_config)
    yield store
    await store.close()


# -- the API tests' fixtures: a test CA, a fresh SQLite store, seeded footprints ---------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlHubStore]:
    async with sqlite_store(tmp_path) as opened:
        yield opened


@pytest.fixture
async def seeded(store: SqlHubStore) -> Seeded:
    return await seed(store)


# An API over HTTPS (each module's own `api` fixture) and customer A's token there.


@pytest.fixture
async def http(pki: Pki, api: RunningApi) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(pki, api.base_url) as client:
        yield client


@pytest.fixture
async def token_a(http: httpx.AsyncClient) -> str:
    return await access_token(http, "customer-a", SECRET_A)
