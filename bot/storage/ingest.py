"""What the web tier writes to the database on its request path, with the driver alone.

The web tier stores each message and echo of a signed delivery in the ``inbox`` table before it
queues the task, so the Celery queue carries only the wamid (``bot.whatsapp.events.InboxRef``)
and Redis, its append-only file and its snapshots never hold a message's text; it also stores
the elements it quarantines, and its readiness probe runs ``SELECT 1``. That is all it asks of
the database, so it talks to it through the driver (asyncpg for PostgreSQL, aiosqlite for
SQLite, the drivers the worker's SQLAlchemy engine uses too) and loads neither SQLAlchemy nor
the ORM models: about 20 MiB less per web process (tests/bench/README.md, footprint). The
tables are the Alembic migrations' (``bot/migrations``), the same ones the worker's models map;
the SQL here is plain ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` that both databases run.

Inbox rows of the messages being handled at the same moment are written in one statement (one
round trip), as the Redis claims are (``bot.queue``); each caller learns which of its wamids
were new. Timestamps are UTC: ``timestamptz`` on PostgreSQL, SQLAlchemy's text format on SQLite
(what the worker's ``UTCDateTime`` columns read and the purge compares).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel

from bot.whatsapp.payload import Quarantined

#: Connections one web process may hold (the operator's connection limit counts 10).
POOL_SIZE = 5
#: Seconds a statement may take before the request gets 503 (Meta retries).
STATEMENT_TIMEOUT = 10.0

#: ``event`` of an inbox row.
MESSAGE = "message"
ECHO = "echo"

#: An inbox row to store: (wamid, event, the event's JSON).
InboxRow = tuple[str, str, str]


class Database(Protocol):
    """The few statements the web tier runs, on PostgreSQL or SQLite. The inserts skip rows
    whose key exists (``ON CONFLICT DO NOTHING``) and return the keys of the new ones."""

    async def ping(self) -> None: ...

    async def insert_inbox(self, rows: Sequence[tuple[Any, ...]]) -> list[str]: ...

    async def delete_inbox(self, wamids: Sequence[str]) -> None: ...

    async def insert_quarantined(self, rows: Sequence[tuple[Any, ...]]) -> list[str]: ...

    async def count_held(self) -> int: ...

    async def aclose(self) -> None: ...


def event_json(event: BaseModel) -> str:
    """An event's JSON for its inbox row: ASCII, so that any text Meta sent (a lone surrogate
    included, which a JSON ``\\ud800`` escape can carry) is stored and read back as it was."""
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":"))


def fingerprint(item: Quarantined) -> str:
    """What identifies a quarantined element across redeliveries (one row per element)."""
    key = "\n".join([item.phone_number_id or "", item.element, item.cause, item.raw])
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _text(value: str | None, limit: int) -> str | None:
    """``value`` clipped to ``limit`` characters and encodable as UTF-8 (PostgreSQL refuses
    lone surrogates, which a JSON string may carry)."""
    if value is None:
        return None
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


class IngestStore:
    """The web tier's writes: the inbox (batched per event-loop iteration), the quarantine and
    the readiness probe, for ``DATABASE_URL``. Connects on first use; one per event loop."""

    def __init__(self, database_url: str) -> None:
        self.db: Database = connect(database_url)
        self._pending: list[tuple[list[InboxRow], asyncio.Future[set[str]]]] = []
        self._flushes: set[asyncio.Future[None]] = set()

    async def ping(self) -> None:
        """Return when the database answers ``SELECT 1``."""
        await self.db.ping()

    async def count_held(self) -> int:
        """How many conversations a person holds now (``released_conversations_held``)."""
        return await self.db.count_held()

    async def put_inbox(self, rows: Sequence[InboxRow]) -> set[str]:
        """Store ``rows`` (each once, whatever the redeliveries); return the wamids that were
        not stored before. Shares one statement with the other requests of this moment."""
        if not rows:
            return set()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[set[str]] = loop.create_future()
        self._pending.append((list(rows), future))
        if len(self._pending) == 1:
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[list[InboxRow], asyncio.Future[set[str]]]]) -> None:
        now = datetime.now(UTC)
        unique = {row[0]: row for rows, _ in batch for row in rows}
        try:
            new = set(await self.db.insert_inbox(
                [(w, event, payload, now) for w, event, payload in unique.values()]
            ))  # fmt: skip
        except Exception as exc:  # every caller answers 503; Meta redelivers
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for rows, future in batch:
            if not future.done():
                mine = {row[0] for row in rows}
                future.set_result(mine & new)
                new -= mine  # a wamid in two requests of one batch is new for the first only

    async def drop_inbox(self, wamids: Iterable[str]) -> None:
        """Delete inbox rows (stored by this request for messages that turned out to be
        duplicates of ones already handled)."""
        values = sorted(set(wamids))
        if values:
            await self.db.delete_inbox(values)

    async def put_quarantined(self, items: Sequence[Quarantined]) -> int:
        """Store quarantined elements (each once, whatever the redeliveries); return how many
        were new."""
        if not items:
            return 0
        now = datetime.now(UTC)
        rows = {
            fingerprint(item): (
                fingerprint(item),
                _text(item.phone_number_id, 64),
                _text(item.field, 64),
                item.element,
                item.cause,
                _text(item.path, 256) or "",
                _text(item.wamid, 256),
                _text(item.reason, 512) or "",
                _text(item.raw, len(item.raw)) or "",
                now,
            )
            for item in items
        }
        return len(await self.db.insert_quarantined(list(rows.values())))

    async def aclose(self) -> None:
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self.db.aclose()


# -- the two databases -------------------------------------------------------------------------


def connect(database_url: str) -> Database:
    """The :class:`Database` for ``DATABASE_URL`` (any spelling ``bot.storage.db`` accepts)."""
    parts = urlsplit(database_url)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme in ("postgres", "postgresql"):
        return _Postgres(_asyncpg_dsn(database_url))
    if scheme == "sqlite":
        return _SQLite(_sqlite_path(database_url))
    raise ValueError(f"DATABASE_URL: unsupported database {scheme!r} (PostgreSQL or SQLite)")


def _asyncpg_dsn(url: str) -> str:
    """``url`` as asyncpg reads it: scheme ``postgresql``, and SQLAlchemy's ``ssl=`` (what
    ``bot.storage.db`` writes for asyncpg) back to libpq's ``sslmode=``."""
    parts = urlsplit(url)
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "ssl":
            key = "sslmode"
            value = {"true": "require", "false": "disable"}.get(value.lower(), value)
        query.append((key, value))
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))


def _sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL (``:memory:``)."""
    rest = url.split(":", 1)[1]
    path = unquote(rest[3:] if rest.startswith("///") else rest.lstrip("/"))
    return path.split("?", 1)[0] or ":memory:"



_PG_INSERT_INBOX = """
INSERT INTO inbox (wamid, event, payload, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
ON CONFLICT (wamid) DO NOTHING RETURNING wamid
"""
_PG_DELETE_INBOX = "DELETE FROM inbox WHERE wamid = ANY($1::text[])"
_PG_INSERT_QUARANTINED = """
INSERT INTO quarantined_events
  (fingerprint, phone_number_id, field, element, cause, path, wamid, reason, raw, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::timestamptz[])
ON CONFLICT (fingerprint) DO NOTHING RETURNING fingerprint
"""

#: The operator counts held conversations with this very statement.
_PG_COUNT_HELD = "SELECT count(*) FROM conversations WHERE held_until > now()"


class _Postgres:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _acquire(self) -> Any:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    import asyncpg

                    self._pool = await asyncpg.create_pool(
                        self.dsn, min_size=0, max_size=POOL_SIZE,
                        command_timeout=STATEMENT_TIMEOUT,
                    )  # fmt: skip
        return self._pool

    async def ping(self) -> None:
        pool = await self._acquire()
        await pool.fetchval("SELECT 1")

    async def _insert(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[str]:
        # One array per column: one prepared statement whatever the number of rows.
        pool = await self._acquire()
        records = await pool.fetch(sql, *(list(column) for column in zip(*rows, strict=True)))
        return [str(r[0]) for r in records]

    async def insert_inbox(self, rows: Sequence[tuple[Any, ...]]) -> list[str]:
        return await self._insert(_PG_INSERT_INBOX, rows)

    async def delete_inbox(self, wamids: Sequence[str]) -> None:
        pool = await self._acquire()
        await pool.execute(_PG_DELETE_INBOX, list(wamids))

    async def insert_quarantined(self, rows: Sequence[tuple[Any, ...]]) -> list[str]:
        return await self._insert(_PG_INSERT_QUARANTINED, rows)

    async def count_held(self) -> int:
        pool = await self._acquire()
        return int(await pool.fetchval(_PG_COUNT_HELD))

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


#: How SQLAlchemy stores a ``DateTime`` on SQLite (``UTCDateTime`` stores UTC).
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"
_SQLITE_INSERT_INBOX = """
INSERT INTO inbox (wamid, event, payload, created_at) VALUES (?, ?, ?, ?)
ON CONFLICT (wamid) DO NOTHING RETURNING wamid
"""
_SQLITE_DELETE_INBOX = "DELETE FROM inbox WHERE wamid = ?"
_SQLITE_COUNT_HELD = "SELECT count(*) FROM conversations WHERE held_until > ?"
_SQLITE_INSERT_QUARANTINED = """
INSERT INTO quarantined_events
  (fingerprint, phone_number_id, field, element, cause, path, wamid, reason, raw, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (fingerprint) DO NOTHING RETURNING fingerprint
"""


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(_SQLITE_DATETIME)
    return value


class _SQLite:
    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> Any:
        if self._conn is None:
            import aiosqlite

            conn = await aiosqlite.connect(self.path, timeout=30)
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=30000")
            self._conn = conn
        return self._conn

    async def ping(self) -> None:
        async with self._lock:
            conn = await self._connection()
            await (await conn.execute("SELECT 1")).close()

    async def _insert(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[str]:
        found: list[str] = []
        async with self._lock:
            conn = await self._connection()
            for row in rows:  # a local file: a statement per row is cheap, and one transaction
                cursor = await conn.execute(sql, [_sqlite_value(v) for v in row])
                found += [str(r[0]) for r in await cursor.fetchall()]
                await cursor.close()
            await conn.commit()
        return found

    async def insert_inbox(self, rows: Sequence[tuple[Any, ...]]) -> list[str]:
        return await self._insert(_SQLITE_INSERT_INBOX, rows)

    async def delete_inbox(self, wamids: Sequence[str]) -> None:
        async with self._lock:
            conn = await self._connection()
            await conn.executemany(_SQLITE_DELETE_INBOX, [(w,) for w in wamids])
            await conn.commit()

    async def insert_quarantined(self, rows: Sequence[tuple[Any, ...]]) -> list[str]:
        return await self._insert(_SQLITE_INSERT_QUARANTINED, rows)

    async def count_held(self) -> int:
        async with self._lock:
            conn = await self._connection()
            now = _sqlite_value(datetime.now(UTC))
            cursor = await conn.execute(_SQLITE_COUNT_HELD, [now])
            row = await cursor.fetchone()
            await cursor.close()
        return int(row[0]) if row else 0

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
