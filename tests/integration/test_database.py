"""``whatsapp_operator.database`` against a real PostgreSQL server (the suite's ``postgres_url``).

Checks the promises of the module: two alternating login roles that share every object through
the owner group, rotation to the standby role, revocation, isolation from other agents, and an
idempotent drop that leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import uuid
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


def test_database_name_plain_and_sanitized() -> None:
    assert db.database_name("shop/acme") == "released_shop_acme"
    hyphen = db.database_name("shop-a/bot")
    assert hyphen.startswith("released_shop_a_bot_")
    assert len(hyphen) == len("released_shop_a_bot_") + 8
    # Would collide after sanitizing: the hash keeps them apart, and it is stable.
    assert db.database_name("a-b/c") != db.database_name("a/b-c")
    assert db.database_name("x/my-bot") != db.database_name("x/my.bot")
    assert db.database_name("a-b/c") == db.database_name("a-b/c")


def test_database_name_truncated_and_roles_fit() -> None:
    key = "n" * 63 + "/" + "b" * 200
    name = db.database_name(key)
    assert len(name) <= db.MAX_DATABASE_NAME
    assert db.database_name(key) == name
    assert db.database_name("n" * 63 + "/" + "b" * 199) != name
    for role in (*db.login_roles(name), db.owner_role(name)):
        assert len(role) <= 63
        db.check_identifier(role)


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
        data = rot.initial_secret_data(creds)
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
        await conn.execute(f"DROP ROLE IF EXISTS {admin_role}")
        await conn.close()
