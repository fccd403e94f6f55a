"""Session fixtures shared by the whole suite: real Redis and PostgreSQL servers.

Both come from Debian's packages (``redis-server``, ``postgresql``) and are started on free
ports on 127.0.0.1 by the suite itself; see ``tests/servers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import Server, scratch_database, start_postgres, start_redis
from tests.unit.chart._helm import find_helm


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Server]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: Server) -> str:
    """URL of a real Redis server shared by the session (tests use distinct keys or flush)."""
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: Server) -> str:
    """Superuser URL of a real PostgreSQL server shared by the session."""
    return postgres_server.url


@pytest.fixture
def postgres_db(postgres_server: Server) -> Iterator[str]:
    """A fresh, empty database for one test; its URL (dropped afterwards)."""
    with scratch_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the helm binary (``hack/install-helm.sh``); skips with the reason when absent."""
    path, why = find_helm()
    if path is None:
        pytest.skip(why)
    return path
