"""The held count (``status.handover.held``) against a real PostgreSQL: the operator counts
the conversations a person holds in a database it provisioned, as the agent's own role, at the
host it reaches the server on; writes the status only when the count changed; and reports a
failure by reason, without the URL or the password."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr
from whatsapp_operator import credentials as keys
from whatsapp_operator import database as db
from whatsapp_operator import handover
from whatsapp_operator.config import OperatorSettings
from whatsapp_operator.reconcile import checks
from whatsapp_operator.reconcile.context import Agent

from bot.core.config import Settings
from bot.storage.db import run_migrations_async
from tests.servers import free_port
from tests.unit.operator.fake_kube import FakeKube, RecordedEvents

pytestmark = pytest.mark.integration

PHONE = "1234567890"
OTHER_PHONE = "9876543210"
NS = "shop"


@pytest.fixture(autouse=True)
def _nothing_remembered() -> Iterator[None]:
    """These agents share a uid: no database URL remembered from another test."""
    handover._urls.clear()
    yield
    handover._urls.clear()


async def provision(postgres_url: str) -> db.DatabaseCredentials:
    """A provisioned agent database whose pods' host is one the operator cannot reach, with
    the bot's schema (its migrations, ``conversations.held_until`` included) created by the
    agent's own role."""
    key = f"ns{uuid.uuid4().hex[:6]}/bot{uuid.uuid4().hex[:6]}"
    creds = await db.ensure_database(postgres_url, key, host_for_pods="pods.invalid:6543")
    reachable = handover.counting_url(postgres_url, creds.url)
    await run_migrations_async(Settings(database_url=reachable, phone_number_id=PHONE))
    return creds


async def hold(url: str, phone: str, until: datetime | None) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        now = datetime.now(UTC)
        await conn.execute(
            "INSERT INTO conversations (phone_number_id, wa_id, created_at, updated_at, "
            "held_until) VALUES ($1, $2, $3, $3, $4)",
            phone, uuid.uuid4().hex[:12], now, until,
        )  # fmt: skip
    finally:
        await conn.close()


async def test_counts_only_this_numbers_current_holds_as_the_agents_role(
    postgres_url: str,
) -> None:
    creds = await provision(postgres_url)
    url = handover.counting_url(postgres_url, creds.url)
    assert await handover.count_held(url, PHONE) == 0
    later, earlier = datetime.now(UTC) + timedelta(hours=1), datetime.now(UTC) - timedelta(hours=1)
    for phone, until in ((PHONE, later), (PHONE, later), (PHONE, earlier), (PHONE, None),
                         (OTHER_PHONE, later)):  # fmt: skip
        await hold(url, phone, until)
    assert await handover.count_held(url, PHONE) == 2
    # The operator logged in as the agent's current role, at the admin URL's host.
    assert f"//{creds.role}:" in url and "pods.invalid" not in url


async def test_a_database_without_the_column_is_not_migrated_yet(postgres_url: str) -> None:
    key = f"ns{uuid.uuid4().hex[:6]}/bot{uuid.uuid4().hex[:6]}"
    creds = await db.ensure_database(postgres_url, key)
    with pytest.raises(handover.HeldCountFailed) as failed:
        await handover.count_held(handover.counting_url(postgres_url, creds.url), PHONE)
    assert failed.value.reason == "NotMigrated"


async def test_failures_name_a_reason_never_the_url_or_password(postgres_url: str) -> None:
    creds = await provision(postgres_url)
    password = creds.password.get_secret_value()
    wrong = creds.model_copy(update={"password": SecretStr("not-" + password)})
    with pytest.raises(handover.HeldCountFailed) as rejected:
        await handover.count_held(handover.counting_url(postgres_url, wrong.url), PHONE)
    assert rejected.value.reason == "DatabaseRejected"

    closed = f"postgresql://admin:{password}@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(handover.HeldCountFailed) as unreachable:
        await handover.count_held(handover.counting_url(closed, creds.url), PHONE)
    assert unreachable.value.reason == "DatabaseUnavailable"
    for failure in (rejected.value, unreachable.value):
        assert failure.__cause__ is None and failure.__suppress_context__
        text = f"{failure.message} {failure!r}"
        assert password not in text and "postgresql://" not in text and "127.0.0.1" not in text


# -- the periodic check on an agent: status.handover written only when it changed -----------


def agent_body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "whatsapp.released.io/v1alpha1",
        "kind": "WhatsAppAgent",
        "metadata": {"name": "acme", "namespace": NS, "uid": "u-1", "generation": 1},
        "spec": {
            "phoneNumberId": PHONE,
            "faqs": [{"q": "Hours?", "a": "9 to 5."}],
            "secrets": {"meta": {"name": "meta"}, "openai": {"name": "openai"}},
            **spec,
        },
        "status": {},
    }


def world(postgres_url: str, creds: db.DatabaseCredentials, **spec: Any) -> FakeKube:
    kube = FakeKube()
    data = {keys.DATABASE_URL: base64.b64encode(creds.url.encode()).decode()}
    kube.put({"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "acme-credentials", "namespace": NS}, "data": data})  # fmt: skip
    kube.put(agent_body(**spec))
    return kube


def agent(kube: FakeKube, settings: OperatorSettings) -> Agent:
    body = kube.obj("WhatsAppAgent", NS, "acme")
    assert body is not None
    return Agent(body=body, kube=kube, settings=settings, events=RecordedEvents())


def status_writes(kube: FakeKube) -> int:
    return len([w for w in kube.written() if w[1] == "WhatsAppAgent"])


async def test_the_status_follows_the_count_and_is_written_only_on_change(
    postgres_url: str,
) -> None:
    creds = await provision(postgres_url)
    settings = OperatorSettings(postgres_admin_url=SecretStr(postgres_url))
    kube = world(postgres_url, creds, handover={})
    url = handover.counting_url(postgres_url, creds.url)

    assert await checks.count_held(agent(kube, settings)) == {"held": 0}
    assert kube.obj("WhatsAppAgent", NS, "acme")["status"]["handover"] == {"held": 0}
    writes = status_writes(kube)
    assert await checks.count_held(agent(kube, settings)) == {"held": 0}
    assert status_writes(kube) == writes  # unchanged: no status write at all

    await hold(url, PHONE, datetime.now(UTC) + timedelta(minutes=30))
    assert await checks.count_held(agent(kube, settings)) == {"held": 1}
    assert kube.obj("WhatsAppAgent", NS, "acme")["status"]["handover"] == {"held": 1}
    assert status_writes(kube) == writes + 1

    # The server moved away: a reason, and no stale number.
    gone = f"postgresql://admin:x@127.0.0.1:{free_port()}/postgres"
    moved = OperatorSettings(postgres_admin_url=SecretStr(gone))
    failed = await checks.count_held(agent(kube, moved))
    assert failed is not None and failed["reason"] == "DatabaseUnavailable"
    assert "held" not in kube.obj("WhatsAppAgent", NS, "acme")["status"]["handover"]

    # Without spec.handover holds still happen (staff replying from the app): still counted.
    body = kube.obj("WhatsAppAgent", NS, "acme")
    assert body is not None
    del body["spec"]["handover"]
    kube.put(body)
    assert await checks.count_held(agent(kube, settings)) == {"held": 1}
    assert kube.obj("WhatsAppAgent", NS, "acme")["status"]["handover"] == {"held": 1}


async def test_an_agent_with_its_own_database_is_not_counted(postgres_url: str) -> None:
    creds = await provision(postgres_url)
    settings = OperatorSettings(postgres_admin_url=SecretStr(postgres_url))
    kube = world(postgres_url, creds, handover={},
                 database={"secretRef": {"name": "db", "key": "url"}})  # fmt: skip
    said = await checks.count_held(agent(kube, settings))
    assert said is not None and said["reason"] == "OwnDatabase" and "held" not in said
