"""``whatsapp_operator.database`` against a real PostgreSQL server (the suite's ``postgres_url``).

Checks the promises of the module: two alternating login roles that share every object through
the owner group, rotation to the standby role, revocation, an idempotent drop that leaves
nothing behind, and a shared server shared safely: an agent's roles connect to their own
database only (not ``postgres``, not ``template1``, not another agent's), see no other tenant's
name, create no temporary objects and hold at most their connection limit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from pydantic import SecretStr
from whatsapp_operator import database as db
from whatsapp_operator.errors import PermanentError, TemporaryError

from tests.servers import free_port

pytestmark = pytest.mark.integration


def _agent() -> str:
    return f"ns{uuid.uuid4().hex[:6]}/bot{uuid.uuid4().hex[:6]}"


async def _connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url, timeout=10)
    return conn


async def _sessions_of(admin_url: str, role: str) -> int:
    """Sessions of ``role`` a moment after a termination (it is asynchronous)."""
    for _ in range(50):
        rows = await _admin_fetch(
            admin_url, "SELECT count(*) AS n FROM pg_stat_activity WHERE usename = $1", role
        )
        if rows[0]["n"] == 0:
            return 0
        await asyncio.sleep(0.1)
    return int(rows[0]["n"])


async def _admin_fetch(admin_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await _connect(admin_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


# -- pure naming --------------------------------------------------------------------------


def test_database_name_is_stable_and_anonymous() -> None:
    name = db.database_name("shop/acme")
    assert name == db.database_name("shop/acme")
    assert name.startswith("released_") and len(name) == len("released_") + db.NAME_HASH_HEX
    assert "shop" not in name and "acme" not in name
    assert db.database_name("a-b/c") != db.database_name("a/b-c")
    for role in (*db.login_roles(name), db.owner_role(name)):
        db.check_identifier(role)
    long_key = "n" * 63 + "/" + "b" * 200
    assert len(db.database_name(long_key)) == len(name)


def test_legacy_database_name_plain_and_sanitized() -> None:
    assert db.legacy_database_name("shop/acme") == "released_shop_acme"
    hyphen = db.legacy_database_name("shop-a/bot")
    assert hyphen.startswith("released_shop_a_bot_")
    assert len(hyphen) == len("released_shop_a_bot_") + 8
    assert db.legacy_database_name("a-b/c") != db.legacy_database_name("a/b-c")
    key = "n" * 63 + "/" + "b" * 200
    assert len(db.legacy_database_name(key)) <= db.MAX_DATABASE_NAME


def test_connection_limit_follows_replicas() -> None:
    # web 1 (+1 while rolling), worker 1 (+1; its tasks share one pool), purge 1; 10 each; +3.
    assert db.connection_limit(1, 1) == (2 + 2 + 1) * 10 + 3
    assert db.connection_limit(3, 2) == (4 + 3 + 1) * 10 + 3
    assert db.connection_limit(0, 0) == 1 * 10 + 3
    assert db.connection_limit(1, 2) > db.connection_limit(1, 1)


def test_pool_size_matches_the_bot() -> None:
    """connection_limit assumes the bot's pool; the bot's engine is what pods run."""
    from bot.storage.db import create_engine_for

    engine = create_engine_for("postgresql://u:p@127.0.0.1:1/x")
    pool: Any = engine.sync_engine.pool
    assert pool.size() + pool._max_overflow == db.BOT_POOL_CONNECTIONS


def test_identifier_checks_and_other_role() -> None:
    for bad in ('x"; DROP DATABASE postgres; --', "Upper", "", "a" * 64, "1abc", "a-b"):
        with pytest.raises(ValueError):
            db.check_identifier(bad)
    assert db.other_role("released_x_y_a") == "released_x_y_b"
    assert db.other_role("released_x_y_b") == "released_x_y_a"
    with pytest.raises(ValueError):
        db.other_role("released_x_y_owner")
    with pytest.raises(ValueError, match="namespace/name"):
        db.database_name("no-slash")


def test_credentials_url_roundtrip_and_repr() -> None:
    creds = db.DatabaseCredentials(
        database="released_a_b",
        role="released_a_b_a",
        password=SecretStr("p@ss/w:rd"),
        host="pg.example",
        port=5433,
    )
    assert creds.url == "postgresql://released_a_b_a:p%40ss%2Fw%3Ard@pg.example:5433/released_a_b"
    back = db.DatabaseCredentials.from_url(creds.url)
    assert back == creds
    assert "p@ss" not in repr(creds) and "p@ss" not in str(creds)


def test_scram_verifier_shape() -> None:
    verifier = db.scram_verifier("secret", salt=b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert "secret" not in verifier
    assert verifier == db.scram_verifier("secret", salt=b"0123456789abcdef")


# -- against the server -------------------------------------------------------------------


async def test_provision_share_rotate_revoke_drop(postgres_url: str) -> None:
    agent = _agent()
    creds = await db.ensure_database(postgres_url, agent)
    name = db.database_name(agent)
    role_a, role_b = db.login_roles(name)
    assert creds.database == name and creds.role == role_a
    assert urlsplit(creds.url).port == urlsplit(postgres_url).port
    try:
        # Role A creates a table (as the group, thanks to the per-database SET role).
        conn_a = await _connect(creds.url)
        await conn_a.execute("CREATE TABLE messages (id serial PRIMARY KEY, body text)")
        await conn_a.execute("INSERT INTO messages (body) VALUES ('hello')")
        owner = await conn_a.fetchval(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'messages'"
        )
        assert owner == db.owner_role(name)
        assert await conn_a.fetchval("SELECT session_user") == role_a

        # The standby role cannot log in before a rotation.
        standby_url = db.build_url(role_b, "whatever", creds.host, creds.port, name)
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await _connect(standby_url)

        # Idempotent: with the current credentials nothing changes and A still works.
        again = await db.ensure_database(postgres_url, agent, current=creds)
        assert again == creds

        # Rotation: B gets a password, reads/writes/alters A's table.
        new_password = db.generate_password()
        await db.set_role_password(postgres_url, role_b, new_password)
        conn_b = await _connect(db.build_url(role_b, new_password, creds.host, creds.port, name))
        assert await conn_b.fetchval("SELECT body FROM messages") == "hello"
        await conn_b.execute("INSERT INTO messages (body) VALUES ('from b')")
        await conn_b.execute("ALTER TABLE messages ADD COLUMN sent_at timestamptz")
        await conn_b.execute("CREATE TABLE b_table (x int)")
        assert await conn_a.fetchval("SELECT count(*) FROM b_table") == 0
        assert await conn_a.fetchval("SELECT count(*) FROM messages") == 2

        # Revoke A: its session is terminated and it cannot log in any more.
        await db.revoke_role(postgres_url, role_a)
        assert await _sessions_of(postgres_url, role_a) == 0
        conn_a.terminate()
        with pytest.raises(asyncpg.PostgresError):
            await _connect(creds.url)
        await db.revoke_role(postgres_url, role_a)  # idempotent
        assert await conn_b.fetchval("SELECT count(*) FROM messages") == 2
        await conn_b.close()

        # Rotating back to A later works (the role stays in the group).
        pw_a = db.generate_password()
        await db.set_role_password(postgres_url, role_a, pw_a)
        conn_a2 = await _connect(db.build_url(role_a, pw_a, creds.host, creds.port, name))
        assert await conn_a2.fetchval("SELECT count(*) FROM b_table") == 0
        await conn_a2.close()
    finally:
        assert await db.drop_database(postgres_url, agent)

    assert not await db.database_exists(postgres_url, agent)
    roles = await _admin_fetch(
        postgres_url, "SELECT rolname FROM pg_roles WHERE rolname LIKE $1", name + "%"
    )
    assert roles == []
    assert await db.drop_database(postgres_url, agent)  # idempotent


async def test_other_agents_cannot_connect(postgres_url: str) -> None:
    one, two = _agent(), _agent()
    creds_one = await db.ensure_database(postgres_url, one)
    creds_two = await db.ensure_database(postgres_url, two)
    try:
        foreign = db.build_url(
            creds_two.role,
            creds_two.password.get_secret_value(),
            creds_one.host,
            creds_one.port,
            creds_one.database,
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _connect(foreign)
    finally:
        await db.drop_database(postgres_url, one)
        await db.drop_database(postgres_url, two)


async def test_host_for_pods_and_foreign_database_refused(postgres_url: str) -> None:
    agent = _agent()
    name = db.database_name(agent)
    creds = await db.ensure_database(postgres_url, agent, host_for_pods="pg.shared.svc:6543")
    try:
        assert creds.url.endswith(f"@pg.shared.svc:6543/{name}")
        # Someone else's tag on the database: never taken over, never dropped.
        conn = await _connect(postgres_url)
        await conn.execute(f"COMMENT ON DATABASE \"{name}\" IS 'released-agent:other/agent'")
        await conn.close()
        with pytest.raises(PermanentError, match="refusing"):
            await db.ensure_database(postgres_url, agent)
        assert not await db.drop_database(postgres_url, agent)
        assert await db.database_exists(postgres_url, agent)
        conn = await _connect(postgres_url)
        await conn.execute(f'COMMENT ON DATABASE "{name}" IS NULL')
        await conn.close()
    finally:
        assert await db.drop_database(postgres_url, agent)


async def test_role_mismatch_and_missing_role(postgres_url: str) -> None:
    agent = _agent()
    stray = db.DatabaseCredentials(
        database="x", role="someone_else", password=SecretStr("pw"), host="h"
    )
    with pytest.raises(PermanentError, match="not one of"):
        await db.ensure_database(postgres_url, agent, current=stray)
    with pytest.raises(PermanentError, match="does not exist"):
        await db.set_role_password(postgres_url, "released_nobody_here_a", "pw-secret-xyz")
    await db.revoke_role(postgres_url, "released_nobody_here_a")  # missing: fine


async def test_errors_never_contain_passwords(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    wrong = f"postgresql://postgres:Wr0ngSecret@{parts.hostname}:{parts.port}/postgres"
    with pytest.raises(PermanentError) as excinfo:
        await db.ensure_database(wrong, _agent())
    assert "Wr0ngSecret" not in str(excinfo.value)
    assert excinfo.value.reason == "DatabaseAdminRejected"

    closed = f"postgresql://postgres:Wr0ngSecret@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(TemporaryError) as excinfo2:
        await db.ensure_database(closed, _agent())
    assert "Wr0ngSecret" not in str(excinfo2.value)
    assert excinfo2.value.reason == "DatabaseUnavailable"


async def test_rotation_actions_on_the_server(postgres_url: str) -> None:
    """rotation's ROTATE and REVOKE work against the server, as the handlers run them."""
    from whatsapp_operator import credentials as keys
    from whatsapp_operator import rotation as rot

    agent = _agent()
    creds = await db.ensure_database(postgres_url, agent)
    try:
        data = {
            keys.REDIS_PASSWORD: "redis-0",
            keys.VERIFY_TOKEN: "verify-0",
            keys.DATABASE_URL: creds.url,
            keys.DATABASE_ROLE: creds.role,
        }
        conn = await _connect(data[keys.DATABASE_URL])
        await conn.execute("CREATE TABLE t (x int)")
        await conn.close()

        rotated = rot.generate_rotated_secret_data(data, "r1")
        await rot.apply_rotated_credentials(rotated, postgres_admin_url=postgres_url)
        await rot.apply_rotated_credentials(rotated, postgres_admin_url=postgres_url)  # again
        # Both the old and the new URL work while pods roll.
        for url in (data[keys.DATABASE_URL], rotated[keys.DATABASE_URL]):
            conn = await _connect(url)
            await conn.execute("INSERT INTO t VALUES (1)")
            await conn.close()

        await rot.revoke_previous_credentials(rotated, postgres_admin_url=postgres_url)
        with pytest.raises(asyncpg.PostgresError):
            await _connect(data[keys.DATABASE_URL])
        final = rot.finalize_secret_data(rotated)
        conn = await _connect(final[keys.DATABASE_URL])
        assert await conn.fetchval("SELECT count(*) FROM t") == 2
        await conn.close()

        # Restart of the operator: ensure_database with the Secret's URL keeps role B.
        again = await db.ensure_database(
            postgres_url, agent, current=db.DatabaseCredentials.from_url(final[keys.DATABASE_URL])
        )
        assert again.role == rotated[keys.DATABASE_ROLE]
    finally:
        await db.drop_database(postgres_url, agent)


async def test_non_superuser_admin(postgres_url: str) -> None:
    """A platform's admin role is often CREATEDB + CREATEROLE only, not a superuser."""
    admin_role = f"opadmin_{uuid.uuid4().hex[:8]}"
    conn = await _connect(postgres_url)
    await conn.execute(f"CREATE ROLE {admin_role} LOGIN CREATEDB CREATEROLE PASSWORD 'adminpw'")
    # PUBLIC may not connect to postgres any more: the platform grants its admin role.
    await conn.execute(f"GRANT CONNECT ON DATABASE postgres TO {admin_role}")
    await conn.close()
    parts = urlsplit(postgres_url)
    admin = f"postgresql://{admin_role}:adminpw@{parts.hostname}:{parts.port}/postgres"
    agent = _agent()
    try:
        creds = await db.ensure_database(admin, agent)
        conn_a = await _connect(creds.url)
        await conn_a.execute("CREATE TABLE t (x int)")
        role_a, role_b = db.login_roles(creds.database)
        await db.set_role_password(admin, role_b, "pw-b-0123456789")
        await db.revoke_role(admin, role_a)
        assert await _sessions_of(postgres_url, role_a) == 0
        conn_a.terminate()
        assert await db.drop_database(admin, agent)
        assert not await db.database_exists(admin, agent)
    finally:
        await db.drop_database(postgres_url, agent)
        conn = await _connect(postgres_url)
        await conn.execute(f"DROP OWNED BY {admin_role}")
        await conn.execute(f"DROP ROLE IF EXISTS {admin_role}")
        await conn.close()


# -- a shared server shared safely --------------------------------------------------------


@asynccontextmanager
async def _agents(postgres_url: str, count: int) -> AsyncIterator[list[db.DatabaseCredentials]]:
    keys = [_agent() for _ in range(count)]
    creds = [await db.ensure_database(postgres_url, key) for key in keys]
    try:
        yield creds
    finally:
        for key in keys:
            await db.drop_database(postgres_url, key)


def _url_for(creds: db.DatabaseCredentials, database: str) -> str:
    password = creds.password.get_secret_value()
    return db.build_url(creds.role, password, creds.host, creds.port, database)


async def test_an_agents_role_connects_to_its_own_database_only(postgres_url: str) -> None:
    async with _agents(postgres_url, 2) as (one, two):
        conn = await _connect(one.url)
        assert await conn.fetchval("SELECT current_database()") == one.database
        await conn.close()
        for other in ("postgres", "template1", two.database):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await _connect(_url_for(one, other))
        rows = await _admin_fetch(
            postgres_url,
            "SELECT has_database_privilege('public', 'postgres', 'CONNECT') AS p, "
            "has_database_privilege('public', 'template1', 'CONNECT') AS t",
        )
        assert (rows[0]["p"], rows[0]["t"]) == (False, False)


async def test_no_other_tenants_name_is_visible(postgres_url: str) -> None:
    mine, theirs = _agent(), _agent()
    namespace, name = theirs.split("/")
    one = await db.ensure_database(postgres_url, mine)
    two = await db.ensure_database(postgres_url, theirs)
    try:
        conn = await _connect(one.url)
        try:
            catalog = await conn.fetch(
                "SELECT datname AS n, shobj_description(oid, 'pg_database') AS d "
                "FROM pg_database UNION ALL SELECT rolname, NULL FROM pg_roles"
            )
        finally:
            await conn.close()
        text = " ".join(f"{r['n']} {r['d'] or ''}" for r in catalog)
        assert two.database in text  # it exists, under an anonymous name
        assert namespace not in text and name not in text
        released = [r for r in catalog if str(r["n"]).startswith("released_") and r["d"]]
        assert released and {r["d"] for r in released} == {db.TAG}
    finally:
        await db.drop_database(postgres_url, mine)
        await db.drop_database(postgres_url, theirs)


async def test_no_temporary_objects_and_no_way_to_grant_them(postgres_url: str) -> None:
    async with _agents(postgres_url, 1) as (one,):
        database, group = one.database, db.owner_role(one.database)
        conn = await _connect(one.url)
        try:
            await conn.execute("CREATE TABLE kept (x int)")  # the schema is the agent's own
            # Granting TEMPORARY back takes the database's ownership: PostgreSQL only warns
            # ("no privileges were granted") and nothing changes.
            for grantee in (group, one.role):
                await conn.execute(f'GRANT TEMPORARY ON DATABASE "{database}" TO "{grantee}"')
            for statement in (
                "CREATE TEMP TABLE scratch (x int)",
                f'ALTER DATABASE "{database}" CONNECTION LIMIT -1',
                f'ALTER DATABASE "{database}" OWNER TO "{group}"',
                f'ALTER DATABASE "{database}" RENAME TO elsewhere',
                "CREATE SCHEMA elsewhere",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            await conn.execute("RESET ROLE")  # as the login role itself: no TEMP either
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TEMP TABLE scratch (x int)")
            assert not await conn.fetchval(
                "SELECT has_database_privilege(current_user, current_database(), 'TEMP')"
            )
        finally:
            await conn.close()


async def test_connection_limit_holds(postgres_url: str) -> None:
    agent = _agent()
    creds = await db.ensure_database(postgres_url, agent, connections=3)
    try:
        rows = await _admin_fetch(
            postgres_url,
            "SELECT datconnlimit FROM pg_database WHERE datname = $1 UNION ALL "
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = ANY($2::text[])",
            creds.database,
            list(db.login_roles(creds.database)),
        )
        assert [r[0] for r in rows] == [3, 3, 3]
        held = [await _connect(creds.url) for _ in range(3)]
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await _connect(creds.url)
        for conn in held:
            await conn.close()
        # A reconcile with more replicas raises the limit; None leaves it alone.
        await db.ensure_database(postgres_url, agent, current=creds, connections=93)
        await db.ensure_database(postgres_url, agent, current=creds)
        rows = await _admin_fetch(
            postgres_url, "SELECT datconnlimit FROM pg_database WHERE datname = $1", creds.database
        )
        assert rows[0][0] == 93
    finally:
        await db.drop_database(postgres_url, agent)


async def test_a_database_of_an_earlier_version_is_kept_and_hardened(postgres_url: str) -> None:
    """Earlier versions named the database after the agent and let its group own it."""
    agent = _agent()
    legacy = db.legacy_database_name(agent)
    owner, (role_a, _role_b) = db.owner_role(legacy), db.login_roles(legacy)
    password = db.generate_password()
    conn = await _connect(postgres_url)
    try:
        await conn.execute(f'CREATE ROLE "{owner}" NOLOGIN')
        for role in db.login_roles(legacy):
            await conn.execute(f'CREATE ROLE "{role}" NOLOGIN INHERIT IN ROLE "{owner}"')
        await conn.execute(f"ALTER ROLE \"{role_a}\" LOGIN PASSWORD '{password}'")
        await conn.execute(f'CREATE DATABASE "{legacy}" OWNER "{owner}"')
        await conn.execute(f'REVOKE ALL ON DATABASE "{legacy}" FROM PUBLIC')
        await conn.execute(f'GRANT ALL ON DATABASE "{legacy}" TO "{owner}"')
        await conn.execute(f"COMMENT ON DATABASE \"{legacy}\" IS 'released-agent:{agent}'")
        await conn.execute(f'ALTER ROLE "{role_a}" IN DATABASE "{legacy}" SET role TO "{owner}"')
    finally:
        await conn.close()
    parts = urlsplit(postgres_url)
    old = db.DatabaseCredentials(
        database=legacy,
        role=role_a,
        password=SecretStr(password),
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
    )
    conn = await _connect(old.url)
    await conn.execute("CREATE TABLE history (body text)")
    await conn.execute("INSERT INTO history VALUES ('kept')")
    await conn.close()
    try:
        creds = await db.ensure_database(postgres_url, agent, current=old)
        assert creds.database == legacy and creds.role == role_a
        conn = await _connect(creds.url)
        assert await conn.fetchval("SELECT body FROM history") == "kept"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TEMP TABLE scratch (x int)")
        await conn.close()
        rows = await _admin_fetch(
            postgres_url,
            "SELECT shobj_description(oid, 'pg_database') AS d FROM pg_database WHERE datname = $1",
            legacy,
        )
        assert rows[0]["d"] == db.TAG
    finally:
        assert await db.drop_database(postgres_url, agent)
    rows = await _admin_fetch(
        postgres_url,
        "SELECT datname FROM pg_database WHERE datname = $1 UNION ALL "
        "SELECT rolname FROM pg_roles WHERE rolname LIKE $2",
        legacy,
        legacy + "%",
    )
    assert rows == []


async def test_an_admin_that_cannot_harden_the_server_is_told_what_to_run(
    postgres_url: str,
) -> None:
    admin_role = f"opadmin_{uuid.uuid4().hex[:8]}"
    conn = await _connect(postgres_url)
    await conn.execute(f"CREATE ROLE {admin_role} LOGIN CREATEDB CREATEROLE PASSWORD 'adminpw'")
    await conn.execute(f"GRANT CONNECT ON DATABASE postgres TO {admin_role}")
    await conn.execute("GRANT CONNECT ON DATABASE template1 TO PUBLIC")  # as a fresh server
    await conn.close()
    parts = urlsplit(postgres_url)
    admin = f"postgresql://{admin_role}:adminpw@{parts.hostname}:{parts.port}/postgres"
    agent = _agent()
    try:
        with pytest.raises(PermanentError) as refused:
            await db.ensure_database(admin, agent)
        assert refused.value.reason == "DatabaseServerNotHardened"
        assert "REVOKE CONNECT ON DATABASE template1 FROM PUBLIC" in str(refused.value)
        assert not await db.database_exists(postgres_url, agent)
        # A superuser admin does it itself.
        await db.ensure_database(postgres_url, agent)
        rows = await _admin_fetch(
            postgres_url, "SELECT has_database_privilege('public', 'template1', 'CONNECT')"
        )
        assert rows[0][0] is False
    finally:
        await db.drop_database(postgres_url, agent)
        conn = await _connect(postgres_url)
        await conn.execute(f"DROP OWNED BY {admin_role}")
        await conn.execute(f"DROP ROLE IF EXISTS {admin_role}")
        await conn.close()
