"""How many conversations a person holds: one query in the agent's database.

The bot marks a conversation a person took over with ``conversations.held_until`` (UTC; the
hold ends then, or earlier when released). The operator counts the held ones for
``status.handover.held`` (the ``Held`` column of ``kubectl get waa``) with
:func:`count_held`, for agents whose database it provisioned only, and as the agent itself:

- it logs in with the agent's *current* login role (``databaseUrl`` of ``NAME-credentials``),
  so the count needs no privilege beyond the agent's own and reads nothing of other agents;
- it connects to the shared server where the operator reaches it (the host, port and options
  of ``RELEASED_POSTGRES_ADMIN_URL``; the pods may use another name for it:
  ``postgres_host_for_pods``).

Conversations are held with or without ``spec.handover`` (the bot never talks over staff who
reply from the WhatsApp Business app), so every agent with a provisioned database is counted.
Agents with ``spec.database.secretRef`` are not: their database URL is the tenant's choice, and
the operator does not connect to addresses a tenant chooses (the bot's
``released_conversations_held`` gauge shows their held conversations). Errors become
:class:`HeldCountFailed` with a reason and a message that name neither the URL nor the password.

The agent's database URL is remembered from the last reconciliation (:func:`remember`), so a
count costs no request to the API server; a refused login forgets it, and the next count reads
``NAME-credentials`` again.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from .database import DatabaseCredentials

#: Seconds to connect, and to run the query.
CONNECT_TIMEOUT = 5.0
QUERY_TIMEOUT = 5.0

#: The query (the bot's schema: ``bot/storage/models.py``); one agent per database, but the
#: phone number keeps a database that two agents share honest.
HELD_QUERY = (
    "SELECT count(*) FROM conversations WHERE held_until > now() AND phone_number_id = $1"
)

#: ``status.handover.reason`` values.
REASON_OWN_DATABASE = "OwnDatabase"
REASON_UNAVAILABLE = "DatabaseUnavailable"
REASON_REJECTED = "DatabaseRejected"
REASON_NOT_MIGRATED = "NotMigrated"
REASON_COUNT_FAILED = "CountFailed"


#: agent uid -> the ``databaseUrl`` a reconciliation last found in ``NAME-credentials``.
_urls: dict[str, str] = {}


def remember(uid: str, agent_url: str) -> None:
    """The agent's current database URL, as a reconciliation just found or wrote it."""
    _urls[uid] = agent_url


def known_url(uid: str) -> str | None:
    """The remembered database URL of the agent (``None``: read ``NAME-credentials``)."""
    return _urls.get(uid)


def forget(uid: str) -> None:
    """Drop what is remembered of an agent (deleted, or its role was refused)."""
    _urls.pop(uid, None)


class HeldCountFailed(Exception):
    """The count could not be made; ``reason`` and ``message`` are safe for the status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def counting_url(admin_url: str, agent_url: str) -> str:
    """The agent's role, password and database at the admin URL's host, port and options."""
    creds = DatabaseCredentials.from_url(agent_url)
    admin = urlsplit(admin_url)
    host = admin.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    userinfo = f"{quote(creds.role, safe='')}:{quote(creds.password.get_secret_value(), safe='')}"
    netloc = f"{userinfo}@{host}:{admin.port or 5432}"
    return urlunsplit((admin.scheme, netloc, "/" + creds.database, admin.query, ""))


async def count_held(url: str, phone_number_id: str) -> int:
    """Conversations held now in the database at ``url`` (raises :class:`HeldCountFailed`)."""
    try:
        conn = await asyncpg.connect(
            url,
            timeout=CONNECT_TIMEOUT,
            command_timeout=QUERY_TIMEOUT,
            server_settings={"application_name": "released-operator"},
        )
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise HeldCountFailed(
            REASON_REJECTED,
            f"the agent's database refused its current role ({type(exc).__name__}); the next "
            "reconciliation re-asserts the role",
        ) from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise HeldCountFailed(
            REASON_UNAVAILABLE,
            f"could not connect to the agent's database ({type(exc).__name__})",
        ) from None
    try:
        value = await conn.fetchval(HELD_QUERY, phone_number_id)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise HeldCountFailed(
            REASON_NOT_MIGRATED,
            "the agent's database has no conversations.held_until yet: the bot creates it when "
            "it starts (a bot image without handover never does)",
        ) from None
    except asyncpg.PostgresError as exc:
        raise HeldCountFailed(
            REASON_COUNT_FAILED,
            f"counting held conversations failed (SQLSTATE {getattr(exc, 'sqlstate', '?')})",
        ) from None
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        raise HeldCountFailed(
            REASON_UNAVAILABLE,
            f"lost the connection to the agent's database ({type(exc).__name__})",
        ) from None
    finally:
        await conn.close(timeout=5)
    return int(value or 0)
