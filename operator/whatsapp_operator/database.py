"""PostgreSQL provisioning for agents without ``spec.database.secretRef``, on a shared server.

For agent ``NS/NAME`` the operator creates, through ``OperatorSettings.postgres_admin_url``:

- database ``released_<24 hex of sha256("NS/NAME")>`` (see :func:`database_name`): the name
  says nothing about the tenant, so one tenant listing ``pg_database`` or ``pg_roles`` learns
  no other tenant's namespace or agent name;
- a group role ``<db>_owner`` (NOLOGIN) that owns the ``public`` schema and every object in it;
- two login roles ``<db>_a`` and ``<db>_b``, members of the group (INHERIT), used alternately
  by credential rotation: the standby role gets a new password and becomes current while pods
  still connect with the other one, which is revoked once they have rolled.

Sharing between the two login roles: each has ``ALTER ROLE <db>_x IN DATABASE <db> SET role TO
<db>_owner``. Every session of either role therefore runs as the group role from its first
statement, without the application issuing ``SET ROLE``, so every table, sequence and index is
*owned by the group*. Either role can read, write, ALTER and DROP what the other created (a
migration needs ownership, which default privileges could not give).

Isolation on the shared server (:func:`ensure_database`, proven by
tests/integration/test_database.py on a real PostgreSQL):

- the *database* is owned by the operator's admin role, not by the group: the group holds only
  ``CONNECT`` on it, so it cannot grant itself ``TEMPORARY`` (no temporary tables), change the
  database's settings or drop it; ``PUBLIC`` holds nothing, so other agents cannot connect;
- ``CONNECT`` on ``postgres`` and ``template1`` is revoked from ``PUBLIC`` (and granted to the
  admin role), so agents' roles cannot connect there either; an admin that may not do this gets
  ``DatabaseServerNotHardened`` with the two statements a superuser must run once;
- a ``CONNECTION LIMIT`` on the database and on both login roles, derived from the agent's
  replicas (:func:`connection_limit`).

Safety: DDL cannot take bind parameters, so every identifier is checked by a strict sanitizer
(``[a-z_][a-z0-9_]*``, at most 63 characters) and double-quoted. Passwords never travel in SQL
text: :func:`scram_verifier` computes the SCRAM-SHA-256 verifier client-side (as ``psql``'s
``\\password`` does) and the statement is built server-side with ``format('%I', '%L')``, so a
password appears neither in server logs nor in our exceptions.

A database is tagged with ``COMMENT ON DATABASE ... IS 'released-agent'`` (no names);
:func:`ensure_database` refuses (``PermanentError``) a database of that name that carries
another tag, and :func:`drop_database` leaves such a database alone. Databases provisioned by
earlier versions (``released_<ns>_<name>``, tagged ``released-agent:NS/NAME``) keep working:
an agent whose credentials name one keeps it (its tag is replaced by the anonymous one), and
deleting the agent drops it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
from pydantic import BaseModel, ConfigDict, SecretStr

from whatsapp_operator.errors import PermanentError, TemporaryError, redact

SERVICE = "postgres"
DB_PREFIX = "released"
#: Longest database name: leaves room for the ``_owner`` suffix within 63 characters.
MAX_DATABASE_NAME = 57
OWNER_SUFFIX = "_owner"
ROLE_SUFFIXES = ("_a", "_b")
#: The tag of every provisioned database: no namespace, no name.
TAG = "released-agent"
#: The tag of databases provisioned by earlier versions: ``released-agent:NS/NAME``.
LEGACY_TAG_PREFIX = "released-agent:"
#: Hex digits of the agent key's hash in a database name (96 bits).
NAME_HASH_HEX = 24
#: Connections one bot process may open (the bot's SQLAlchemy pool: pool_size 5 plus
#: max_overflow 5; tests/integration/test_database.py keeps the two in step).
BOT_POOL_CONNECTIONS = 10
#: Connections beyond the pods' pools: a migration, the operator's own admin session, a spare.
CONNECTION_HEADROOM = 3
#: Databases that exist on every server and that agents' roles must not connect to.
SYSTEM_DATABASES = ("postgres", "template1")
SCRAM_ITERATIONS = 4096
CONNECT_TIMEOUT = 10.0

_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_UNSAFE = re.compile(r"[^a-z0-9]+")


class DatabaseCredentials(BaseModel):
    """Credentials of an agent's current login role; ``url`` is what pods get as DATABASE_URL."""

    model_config = ConfigDict(frozen=True)

    database: str
    role: str
    password: SecretStr
    host: str
    port: int = 5432

    @property
    def url(self) -> str:
        """``postgresql://role:password@host:port/database`` (password percent-encoded)."""
        return build_url(
            self.role, self.password.get_secret_value(), self.host, self.port, self.database
        )

    @classmethod
    def from_url(cls, url: str) -> DatabaseCredentials:
        """Parse a ``postgresql://`` URL (as stored in the Secret's ``databaseUrl``)."""
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.username:
            raise ValueError("not a postgresql:// URL with a user name")
        return cls(
            database=parts.path.lstrip("/"),
            role=unquote(parts.username),
            password=SecretStr(unquote(parts.password or "")),
            host=parts.hostname or "localhost",
            port=parts.port or 5432,
        )


# -- names ----------------------------------------------------------------------------------


def split_agent_key(agent_key: str) -> tuple[str, str]:
    """``"ns/name"`` -> ``("ns", "name")``."""
    namespace, sep, name = agent_key.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"agent key must be 'namespace/name', got {agent_key!r}")
    return namespace, name


def database_name(agent_key: str) -> str:
    """The database of agent ``ns/name``: ``released_`` and 24 hex digits of its sha256.

    Stable (a recreated agent finds its kept database again) and anonymous (the name tells
    other tenants nothing).
    """
    split_agent_key(agent_key)
    digest = hashlib.sha256(agent_key.encode()).hexdigest()[:NAME_HASH_HEX]
    return f"{DB_PREFIX}_{digest}"


def legacy_database_name(agent_key: str) -> str:
    """The name earlier versions gave agent ``ns/name``'s database: ``released_<ns>_<name>``.

    Lower-case letters and digits were kept, anything else became ``_``; when that lost
    information or the name was longer than 57 characters, it was cut and ``_<8 hex of
    sha256(agent key)>`` appended.
    """
    namespace, name = split_agent_key(agent_key)
    namespace, name = namespace.lower(), name.lower()
    lossy = bool(_UNSAFE.search(namespace) or _UNSAFE.search(name))
    base = f"{DB_PREFIX}_{_UNSAFE.sub('_', namespace)}_{_UNSAFE.sub('_', name)}".strip("_")
    if not lossy and len(base) <= MAX_DATABASE_NAME:
        return base
    digest = hashlib.sha256(agent_key.encode()).hexdigest()[:8]
    prefix = base[: MAX_DATABASE_NAME - len(digest) - 1].rstrip("_")
    return f"{prefix}_{digest}"


def connection_limit(web_replicas: int, worker_replicas: int) -> int:
    """The most connections an agent's pods may hold at once, rolling updates included.

    Every bot process has its own pool of :data:`BOT_POOL_CONNECTIONS`: one uvicorn process
    per web pod, one process per worker pod (its ``concurrency`` tasks run in threads that
    share the process's pool), one purge run at a time. While a Deployment rolls, one extra pod
    runs beside the others (``maxSurge: 1``). Computed from the spec's replicas even while the
    agent is suspended, so resuming needs no change.
    """
    web = web_replicas + 1 if web_replicas else 0
    worker = worker_replicas + 1 if worker_replicas else 0
    purge = 1
    return (web + worker + purge) * BOT_POOL_CONNECTIONS + CONNECTION_HEADROOM


def owner_role(database: str) -> str:
    """The NOLOGIN group role that owns ``database`` and everything in it."""
    return check_identifier(database + OWNER_SUFFIX)


def login_roles(database: str) -> tuple[str, str]:
    """The two alternating login roles of ``database``: ``<db>_a`` and ``<db>_b``."""
    a, b = (check_identifier(database + suffix) for suffix in ROLE_SUFFIXES)
    return a, b


def other_role(role: str) -> str:
    """The standby partner of a login role: ``x_a`` <-> ``x_b``."""
    check_identifier(role)
    if role.endswith("_a"):
        return role[:-2] + "_b"
    if role.endswith("_b"):
        return role[:-2] + "_a"
    raise ValueError(f"{role!r} is not one of the operator's alternating login roles")


def check_identifier(name: str) -> str:
    """``name`` if it is a safe lower-case PostgreSQL identifier, else ``ValueError``."""
    if not _IDENT_RE.match(name):
        raise ValueError(f"unsafe PostgreSQL identifier {name!r}")
    return name


def quote_ident(name: str) -> str:
    """A checked identifier, double-quoted for DDL."""
    return '"' + check_identifier(name) + '"'


# -- secrets --------------------------------------------------------------------------------


def generate_password() -> str:
    """A new random password (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def scram_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """PostgreSQL's ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`` for ``password``.

    Only ASCII passwords are accepted (for them SASLprep is the identity), which covers every
    password this module generates.
    """
    if not password.isascii():
        raise ValueError("only ASCII passwords are supported")
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def build_url(role: str, password: str, host: str, port: int, database: str) -> str:
    """``postgresql://role:password@host:port/database`` with user and password encoded."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    userinfo = f"{quote(role, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{userinfo}@{host}:{port}/{database}"


def _pod_endpoint(admin_url: str, host_for_pods: str | None) -> tuple[str, int]:
    """Host and port for pods: ``host_for_pods`` (``host`` or ``host:port``) or the admin URL's."""
    parts = urlsplit("//" + host_for_pods) if host_for_pods else urlsplit(admin_url)
    return parts.hostname or "localhost", parts.port or 5432


# -- connection and error mapping -----------------------------------------------------------


@asynccontextmanager
async def _admin(admin_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An admin connection; connection failures become domain errors without the URL."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise PermanentError(
            "PostgreSQL rejected the operator's admin credentials "
            f"({type(exc).__name__}); check RELEASED_POSTGRES_ADMIN_URL",
            reason="DatabaseAdminRejected",
            service=SERVICE,
        ) from None
    except (
        OSError,
        TimeoutError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
        asyncpg.PostgresConnectionError,
    ) as exc:
        raise TemporaryError(
            f"cannot reach the shared PostgreSQL server ({type(exc).__name__})",
            reason="DatabaseUnavailable",
            service=SERVICE,
            delay=15.0,
        ) from None
    except asyncpg.PostgresError as exc:
        raise _map_pg_error(exc, "connecting", admin_url) from None
    try:
        yield conn
    except asyncpg.PostgresError as exc:
        raise _map_pg_error(exc, "provisioning", admin_url) from None
    except (OSError, asyncpg.InterfaceError) as exc:
        raise TemporaryError(
            f"lost the connection to PostgreSQL ({type(exc).__name__})",
            reason="DatabaseUnavailable",
            service=SERVICE,
            delay=15.0,
        ) from None
    finally:
        await conn.close(timeout=5)


def _map_pg_error(exc: asyncpg.PostgresError, what: str, admin_url: str) -> Exception:
    sqlstate = getattr(exc, "sqlstate", "") or ""
    text = redact(str(getattr(exc, "message", "") or type(exc).__name__), [admin_url])
    message = f"PostgreSQL error while {what}: {text} (SQLSTATE {sqlstate})"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return PermanentError(
            message + "; the admin role needs CREATEDB and CREATEROLE",
            reason="DatabasePermissionDenied",
            service=SERVICE,
        )
    if sqlstate.startswith(("08", "53", "57", "40")):  # connection, resources, shutdown, retry
        return TemporaryError(message, reason="DatabaseUnavailable", service=SERVICE, delay=15.0)
    return TemporaryError(message, reason="DatabaseError", service=SERVICE, delay=30.0)


async def _role_exists(conn: asyncpg.Connection, role: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role))


async def _create_role(conn: asyncpg.Connection, role: str, options: str) -> None:
    if await _role_exists(conn, role):
        return
    with suppress(asyncpg.DuplicateObjectError):  # created concurrently
        await conn.execute(f"CREATE ROLE {quote_ident(role)} {options}")


async def _set_password(conn: asyncpg.Connection, role: str, password: str, *, login: bool) -> None:
    statement = await conn.fetchval(
        "SELECT format('ALTER ROLE %I WITH ' || $3 || ' PASSWORD %L', $1::text, $2::text)",
        check_identifier(role),
        scram_verifier(password),
        "LOGIN" if login else "NOLOGIN",
    )
    await conn.execute(statement)


async def _database_tag(conn: asyncpg.Connection, database: str) -> tuple[bool, str | None]:
    row = await conn.fetchrow(
        "SELECT shobj_description(oid, 'pg_database') AS tag FROM pg_database WHERE datname = $1",
        database,
    )
    if row is None:
        return False, None
    tag: str | None = row["tag"]
    return True, tag


@asynccontextmanager
async def _agent_lock(conn: asyncpg.Connection, database: str) -> AsyncIterator[None]:
    key = int.from_bytes(hashlib.sha256(database.encode()).digest()[:8], "big", signed=True)
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)


# -- public API -----------------------------------------------------------------------------


async def _harden_server(conn: asyncpg.Connection) -> None:
    """Revoke ``CONNECT`` on the system databases from ``PUBLIC`` (granting it to the admin).

    Idempotent and free once done. An admin that may not (not their owner) gets a
    ``PermanentError`` naming the statements a superuser must run once: agents are not
    provisioned on a server where their roles could connect to ``postgres``.
    """
    for database in SYSTEM_DATABASES:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            continue
        open_to_all = await conn.fetchval(
            "SELECT has_database_privilege('public', $1, 'CONNECT')", database
        )
        if not open_to_all:
            continue
        ident = quote_ident(database)
        # Without the right to, PostgreSQL only warns ("no privileges could be revoked"):
        # look again afterwards.
        with suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"GRANT CONNECT ON DATABASE {ident} TO CURRENT_USER")
            await conn.execute(f"REVOKE CONNECT ON DATABASE {ident} FROM PUBLIC")
        if await conn.fetchval("SELECT has_database_privilege('public', $1, 'CONNECT')", database):
            statements = " ".join(
                f"REVOKE CONNECT ON DATABASE {d} FROM PUBLIC; "
                f"GRANT CONNECT ON DATABASE {d} TO <admin role>;"
                for d in SYSTEM_DATABASES
            )
            raise PermanentError(
                f"every role may connect to the shared PostgreSQL's {database!r} database and "
                "the operator's admin role may not change that; as a superuser run once: "
                f"{statements}",
                reason="DatabaseServerNotHardened",
                service=SERVICE,
            )


def _database_url(admin_url: str, database: str) -> str:
    """``admin_url`` pointed at ``database``."""
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def _own_public_schema(admin_url: str, database: str, owner: str) -> None:
    """Give the ``public`` schema of ``database`` to the agent's group (PostgreSQL 15+ gives it
    to the database owner, which is the admin). Where the admin may not (PostgreSQL 14 and
    older, whose ``public`` belongs to the bootstrap superuser and lets everyone create), the
    schema stays as it is."""
    async with _admin(_database_url(admin_url, database)) as conn:
        current = await conn.fetchval(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
        )
        if current is None or current == owner:
            return
        try:
            await conn.execute(f"ALTER SCHEMA public OWNER TO {quote_ident(owner)}")
        except asyncpg.InsufficientPrivilegeError:
            return
        await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")


async def ensure_database(
    admin_url: str,
    agent_key: str,
    *,
    host_for_pods: str | None = None,
    current: DatabaseCredentials | None = None,
    connections: int | None = None,
) -> DatabaseCredentials:
    """Create (idempotently) the agent's database, group role and two login roles.

    Without ``current`` (first provisioning) role ``<db>_a`` gets a new password and is returned
    as the active role. With ``current`` (read back from the Secret's ``databaseUrl``) that role
    is kept: its password is set again (which heals a restored server) and it is returned with
    the database and host recomputed; credentials that name the database an earlier version
    provisioned keep it. The other login role is left as it is (NOLOGIN until a rotation makes
    it current). ``connections`` (see :func:`connection_limit`) becomes the ``CONNECTION
    LIMIT`` of the database and of both login roles; ``None`` leaves the limits as they are.
    """
    database = database_name(agent_key)
    if current is not None and current.database == legacy_database_name(agent_key):
        database = current.database
    owner = owner_role(database)
    role_a, role_b = login_roles(database)
    if current is not None and current.role not in (role_a, role_b):
        raise PermanentError(
            f"database role {current.role!r} in the credentials Secret is not one of "
            f"{role_a!r}/{role_b!r}",
            reason="DatabaseRoleMismatch",
            service=SERVICE,
        )
    active = current.role if current is not None else role_a
    password = current.password.get_secret_value() if current is not None else generate_password()
    own_tags = (None, TAG, LEGACY_TAG_PREFIX + agent_key)
    db = quote_ident(database)
    async with _admin(admin_url) as conn, _agent_lock(conn, database):
        await _harden_server(conn)
        exists, existing_tag = await _database_tag(conn, database)
        if exists and existing_tag not in own_tags:
            raise PermanentError(
                f"database {database!r} already exists and belongs to something else; "
                "refusing to take it over",
                reason="DatabaseNameConflict",
                service=SERVICE,
            )
        await _create_role(conn, owner, "NOLOGIN")
        for role in (role_a, role_b):
            await _create_role(conn, role, "NOLOGIN INHERIT")
            await conn.execute(f"GRANT {quote_ident(owner)} TO {quote_ident(role)}")
        is_super = bool(
            await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        )
        if not is_super:
            # A non-superuser admin (CREATEDB, CREATEROLE) must be a member of the roles to
            # take a database over from an earlier version's owner group, give them the
            # public schema and terminate their sessions (revocation, DROP ... WITH (FORCE)).
            for role in (owner, role_a, role_b):
                await conn.execute(f"GRANT {quote_ident(role)} TO CURRENT_USER")
        if not exists:
            with suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {db}")
        # The admin owns the database; the group may only connect (no TEMPORARY, no CREATE
        # of schemas, no ALTER/DROP DATABASE, nothing it could grant itself back).
        await conn.execute(f"ALTER DATABASE {db} OWNER TO CURRENT_USER")
        await conn.execute(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
        await conn.execute(f"REVOKE ALL ON DATABASE {db} FROM {quote_ident(owner)}")
        await conn.execute(f"GRANT CONNECT ON DATABASE {db} TO {quote_ident(owner)}")
        comment = await conn.fetchval("SELECT format('%L', $1::text)", TAG)
        await conn.execute(f"COMMENT ON DATABASE {db} IS {comment}")
        for role in (role_a, role_b):
            await conn.execute(
                f"ALTER ROLE {quote_ident(role)} IN DATABASE {db} SET role TO {quote_ident(owner)}"
            )
        if connections is not None:
            limit = max(1, int(connections))
            await conn.execute(f"ALTER DATABASE {db} CONNECTION LIMIT {limit}")
            for role in (role_a, role_b):
                await conn.execute(f"ALTER ROLE {quote_ident(role)} CONNECTION LIMIT {limit}")
        await _set_password(conn, active, password, login=True)
    await _own_public_schema(admin_url, database, owner)
    host, port = _pod_endpoint(admin_url, host_for_pods)
    return DatabaseCredentials(
        database=database, role=active, password=SecretStr(password), host=host, port=port
    )


async def set_role_password(admin_url: str, role: str, password: str) -> None:
    """Give ``role`` a new password and LOGIN (rotation: the standby role becomes current)."""
    check_identifier(role)
    async with _admin(admin_url) as conn:
        if not await _role_exists(conn, role):
            raise PermanentError(
                f"database role {role!r} does not exist",
                reason="DatabaseRoleMissing",
                service=SERVICE,
            )
        await _set_password(conn, role, password, login=True)


async def revoke_role(admin_url: str, role: str) -> None:
    """Make ``role`` unusable: NOLOGIN, a random password nobody knows, sessions terminated.

    Idempotent; a missing role is not an error. The role stays a member of the group, so a
    later rotation can bring it back with a new password.
    """
    check_identifier(role)
    async with _admin(admin_url) as conn:
        if not await _role_exists(conn, role):
            return
        await _set_password(conn, role, generate_password(), login=False)
        await _terminate(conn, "usename", role)


_TERMINATE = {
    "usename": "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE usename = $1 AND pid <> pg_backend_pid()",
    "datname": "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = $1 AND pid <> pg_backend_pid()",
}


async def _terminate(conn: asyncpg.Connection, column: str, value: str) -> None:
    """Terminate the sessions of a role (``usename``) or in a database (``datname``).

    Best effort: an admin that may not signal them (not a member of the role) leaves them be;
    NOLOGIN and the new password already keep new sessions out.
    """
    with suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute(_TERMINATE[column], value)


async def drop_database(admin_url: str, agent_key: str) -> bool:
    """Terminate connections, drop the agent's database and its three roles; idempotent.

    The database an earlier version provisioned for the agent is dropped too. Returns False
    (and drops nothing) when a database of the agent's name carries another tag.
    """
    names = [database_name(agent_key), legacy_database_name(agent_key)]
    own_tags = (None, TAG, LEGACY_TAG_PREFIX + agent_key)
    async with _admin(admin_url) as conn:
        found: list[tuple[str, bool]] = []
        for database in names:
            exists, tag = await _database_tag(conn, database)
            if exists and tag not in own_tags:
                return False
            found.append((database, exists))
        for database, exists in found:
            legacy = database != names[0]
            if legacy and not exists:
                continue  # the roles of a name never used are not the agent's
            async with _agent_lock(conn, database):
                await _drop_one(conn, database, exists)
    return True


async def _drop_one(conn: asyncpg.Connection, database: str, exists: bool) -> None:
    owner = owner_role(database)
    roles = (*login_roles(database), owner)
    for role in roles[:2]:
        if await _role_exists(conn, role):
            await conn.execute(f"ALTER ROLE {quote_ident(role)} WITH NOLOGIN")
    if exists:
        await _terminate(conn, "datname", database)
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
    for role in roles:
        if await _role_exists(conn, role):
            await _terminate(conn, "usename", role)
            await _drop_role(conn, role)


async def _drop_role(conn: asyncpg.Connection, role: str) -> None:
    for attempt in range(3):
        try:
            await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")
            return
        except asyncpg.DependentObjectsStillReferencedError:
            # Left-over grants elsewhere on the server (in the current database): drop them.
            await conn.execute(f"DROP OWNED BY {quote_ident(role)}")
            if attempt:
                await asyncio.sleep(0.2)


async def database_exists(admin_url: str, agent_key: str) -> bool:
    """Whether the agent's database exists on the shared server."""
    async with _admin(admin_url) as conn:
        exists, _ = await _database_tag(conn, database_name(agent_key))
        return exists
