"""The async database engine, sessions and schema migrations.

``DATABASE_URL`` may be ``sqlite+aiosqlite:///path`` (the default, a local file) or a PostgreSQL
URL in any of the spellings people paste (``postgres://``, ``postgresql://``,
``postgresql+psycopg2://``...): it is rewritten to the asyncpg driver, and libpq's ``sslmode``
query parameter becomes asyncpg's ``ssl``.

Engines are cached per URL, and also per event loop: asyncpg and aiosqlite connections belong to
the loop that opened them, so an engine is never handed to another loop (a Celery worker process
has one loop of its own; tests open a loop per test). After a ``fork`` the inherited pools are
dropped without closing the parent's connections.

Nothing here creates tables implicitly: the schema comes from the Alembic revisions in
``bot/migrations`` through :func:`run_migrations` (the ``released migrate`` command, and
``released run`` before it starts the embedded bot).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core.config import Settings, get_settings

#: Where ``alembic.ini``, ``env.py`` and ``versions/`` live (shipped inside the package).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

#: Any fixed number: serializes concurrent ``migrate`` runs on one PostgreSQL database.
_MIGRATION_LOCK_ID = 0x52454C45  # "RELE"


def normalize_database_url(url: str) -> str:
    """Return ``url`` rewritten for an async driver (asyncpg or aiosqlite)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        query = dict(parsed.query)
        sslmode = query.pop("sslmode", None)
        if sslmode is not None and "ssl" not in query:
            query["ssl"] = sslmode
        parsed = parsed.set(drivername="postgresql+asyncpg", query=query)
    elif backend == "sqlite" and parsed.get_driver_name() != "aiosqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_pragmas_for_migrations(dbapi_connection: Any, _record: Any) -> None:
    # Alembic's batch mode rebuilds a SQLite table (copy, drop, rename): with foreign keys
    # enforced, dropping the old table would cascade-delete the rows that reference it.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=OFF")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_engine_for(url: str, *, for_migrations: bool = False, **kwargs: Any) -> AsyncEngine:
    """A new async engine for ``url`` (normalized), with SQLite's foreign keys enforced
    (except ``for_migrations``, where Alembic's table rebuilds need them off)."""
    async_url = normalize_database_url(url)
    is_sqlite = async_url.startswith("sqlite")
    if not is_sqlite:
        kwargs.setdefault("pool_pre_ping", True)
        if "poolclass" not in kwargs:
            kwargs.setdefault("pool_size", 5)
            kwargs.setdefault("max_overflow", 5)
    else:
        kwargs.setdefault("connect_args", {"timeout": 30})
    engine = create_async_engine(async_url, **kwargs)
    if is_sqlite:
        pragmas = _sqlite_pragmas_for_migrations if for_migrations else _sqlite_pragmas
        event.listen(engine.sync_engine, "connect", pragmas)
    return engine


class _CachedEngine:
    __slots__ = ("engine", "loop", "pid")

    def __init__(
        self, engine: AsyncEngine, loop: asyncio.AbstractEventLoop | None, pid: int
    ) -> None:
        self.engine = engine
        self.loop: weakref.ReferenceType[asyncio.AbstractEventLoop] | None = (
            weakref.ref(loop) if loop is not None else None
        )
        self.pid = pid


_engines: dict[str, _CachedEngine] = {}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def get_engine(settings: Settings | None = None) -> AsyncEngine:
    """The engine for ``settings.database_url``, cached per URL (and per event loop/process)."""
    settings = settings or get_settings()
    url = normalize_database_url(settings.database_url)
    loop = _running_loop()
    pid = os.getpid()
    cached = _engines.get(url)
    if cached is not None:
        cached_loop = cached.loop() if cached.loop is not None else None
        same_loop = cached.loop is None or cached_loop is loop
        if cached.pid == pid and same_loop:
            if cached.loop is None and loop is not None:
                cached.loop = weakref.ref(loop)  # first use binds the engine to this loop
            return cached.engine
        # Another process (fork) or another loop: drop the pool without touching sockets that
        # belong to someone else.
        cached.engine.sync_engine.dispose(close=False)
    engine = create_engine_for(url)
    _engines[url] = _CachedEngine(engine, loop, pid)
    return engine


async def dispose_engines() -> None:
    """Close every cached engine that belongs to the running loop (worker shutdown, tests)."""
    loop = _running_loop()
    for url, cached in list(_engines.items()):
        owner = cached.loop() if cached.loop is not None else None
        if cached.pid == os.getpid() and (owner is None or owner is loop):
            await cached.engine.dispose()
        else:
            cached.engine.sync_engine.dispose(close=False)
        del _engines[url]


@asynccontextmanager
async def session_scope(settings: Settings | None = None) -> AsyncIterator[AsyncSession]:
    """A session in a transaction: committed when the block ends, rolled back on error."""
    session = AsyncSession(get_engine(settings), expire_on_commit=False)
    try:
        yield session
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    finally:
        await session.close()


# -- migrations ---------------------------------------------------------------------------------


def alembic_config(settings: Settings | None = None) -> Any:
    """Alembic's ``Config`` for the packaged migrations and ``settings.database_url``."""
    from alembic.config import Config

    settings = settings or get_settings()
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option(
        "sqlalchemy.url", normalize_database_url(settings.database_url).replace("%", "%%")
    )
    return cfg


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _upgrade(connection: Connection, cfg: Any, revision: str) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def run_migrations_async(settings: Settings | None = None, revision: str = "head") -> None:
    """Upgrade the database schema to ``revision`` (from async code)."""
    settings = settings or get_settings()
    url = normalize_database_url(settings.database_url)
    _ensure_sqlite_dir(url)
    engine = create_engine_for(url, for_migrations=True, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, alembic_config(settings), revision)
    finally:
        await engine.dispose()


def run_migrations(settings: Settings | None = None, revision: str = "head") -> None:
    """Upgrade the database schema to ``revision`` (``released migrate``; idempotent).

    Works from plain sync code; called while an event loop runs, it migrates in a helper thread.
    Concurrent runs on PostgreSQL are serialized by an advisory lock.
    """
    if _running_loop() is None:
        asyncio.run(run_migrations_async(settings, revision))
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run_migrations_async(settings, revision)).result()
