"""``spec.handover`` on a real control plane, with a real PostgreSQL: the operator configures
both tiers for it, keeps the admin API off the Ingress, lets the worker reach the notification
URL's port, refuses a URL the platform does not allow, waits for the notification Secret, and
shows how many conversations a person holds in ``kubectl get waa`` (the ``Held`` column).

A module operator process watches the ``ho-*`` namespaces with a shared PostgreSQL
(``RELEASED_POSTGRES_ADMIN_URL``), the held count every second, and the platform allowing
notifications to 127.0.0.0/8 (where the tests' fakes listen).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from kubernetes import client
from whatsapp_operator import handover as held

from bot.core.config import Settings
from bot.storage.db import run_migrations_async
from tests.integration.operator.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    agent_manifest,
    agent_namespace,
    wait_for,
)
from tests.integration.operator.test_operator import (
    condition,
    create_agent,
    get_agent,
    phone,
    wait_ready,
)
from tests.integration.operator.test_outside_world import table_row
from tests.servers import free_port

pytestmark = pytest.mark.k8s

HMAC_KEY = "hmac-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def handover_operator(
    api: client.ApiClient,
    operator_env: dict[str, str],
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    env = {
        **operator_env,
        "RELEASED_NAMESPACES": "ho-*",
        "RELEASED_POSTGRES_ADMIN_URL": postgres_url,
        "RELEASED_HANDOVER_COUNT_INTERVAL": "1",
        "RELEASED_HANDOVER_NOTIFY_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
    }
    proc = OperatorProcess(env, tmp_path_factory.mktemp("handover-operator"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def ns(core: client.CoreV1Api) -> Iterator[str]:
    with agent_namespace(core, "ho") as name:
        yield name


def create_hmac_secret(core: client.CoreV1Api, ns: str) -> None:
    data = {"key": base64.b64encode(HMAC_KEY.encode()).decode()}
    core.create_namespaced_secret(ns, {"metadata": {"name": "hmac"}, "data": data})


def env_of(apps: client.AppsV1Api, ns: str, name: str) -> dict[str, Any]:
    dep = apps.read_namespaced_deployment(name, ns)
    return {e.name: e for e in dep.spec.template.spec.containers[0].env}


def status_handover(custom: client.CustomObjectsApi, ns: str, name: str) -> Any:
    return ((get_agent(custom, ns, name) or {}).get("status") or {}).get("handover")


def wait_blocked(
    custom: client.CustomObjectsApi, ns: str, name: str, reason: str, operator: OperatorProcess
) -> str:
    def probe() -> str | None:
        cond = condition(get_agent(custom, ns, name), "Ready")
        if cond and cond["status"] == "False" and cond["reason"] == reason:
            return str(cond["message"])
        return None

    try:
        return wait_for(f"Ready=False/{reason}", probe)
    except AssertionError:
        raise AssertionError(
            f"{name}: {condition(get_agent(custom, ns, name), 'Ready')}\n{operator.log_tail()}"
        ) from None


def migrate_and_hold(postgres_url: str, agent_url: str, phone_number_id: str, count: int) -> None:
    """What the bot does in the agent's database: its schema, and ``count`` held conversations
    (plus one whose hold is over)."""

    async def run() -> None:
        url = held.counting_url(postgres_url, agent_url)
        await run_migrations_async(Settings(database_url=url, phone_number_id=phone_number_id))
        conn = await asyncpg.connect(url, timeout=10)
        try:
            now = datetime.now(UTC)
            for until in [now + timedelta(hours=1)] * count + [now - timedelta(hours=1)]:
                await conn.execute(
                    "INSERT INTO conversations (phone_number_id, wa_id, created_at, updated_at,"
                    " held_until) VALUES ($1, $2, $3, $3, $4)",
                    phone_number_id, uuid.uuid4().hex[:12], now, until,
                )  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(run())


def test_a_handover_agent_from_spec_to_the_held_column(
    handover_operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    api: client.ApiClient,
    ns: str,
    postgres_url: str,
) -> None:
    create_hmac_secret(core, ns)
    notify_port = free_port()
    number = phone()
    body = agent_manifest(
        "desk",
        phoneNumberId=number,
        handover={
            "message": "A person from our team takes over now.",
            "holdDuration": "30m",
            "phrases": {"en": ["talk to a person"]},
            "notify": {"url": f"https://127.0.0.1:{notify_port}/hook",
                       "secretRef": {"name": "hmac", "key": "key"}},
        },
    )  # fmt: skip
    del body["spec"]["database"]  # provisioned on the shared PostgreSQL: counted
    create_agent(custom, ns, body)
    wait_ready(custom, ns, "desk", handover_operator)

    # Both tiers are told; only the worker notifies, with a reference to the tenant's key.
    web, worker = env_of(apps, ns, "desk-web"), env_of(apps, ns, "desk-worker")
    for env in (web, worker):
        assert env["HANDOVER_ENABLED"].value == "true"
        assert env["HANDOVER_HOLD_SECONDS"].value == "1800"
        assert env["HANDOVER_MESSAGE"].value == "A person from our team takes over now."
    assert worker["HANDOVER_NOTIFY_URL"].value == f"https://127.0.0.1:{notify_port}/hook"
    ref = worker["HANDOVER_NOTIFY_SECRET"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("hmac", "key")
    assert "HANDOVER_NOTIFY_URL" not in web and "HANDOVER_NOTIFY_SECRET" not in web
    # The admin token for the web tier, the identifiers' salt for the worker: generated.
    creds = core.read_namespaced_secret("desk-credentials", ns).data
    assert {"adminToken", "safetyIdentifierSalt"} <= set(creds)
    assert web["ADMIN_TOKEN"].value_from.secret_key_ref.key == "adminToken"
    assert "ADMIN_TOKEN" not in worker
    assert worker["SAFETY_IDENTIFIER_SALT"].value_from.secret_key_ref.key == "safetyIdentifierSalt"
    # The key itself is nowhere the operator wrote.
    for dep in ("desk-web", "desk-worker"):
        assert HMAC_KEY not in str(apps.read_namespaced_deployment(dep, ns).to_dict())
    assert HMAC_KEY not in str(get_agent(custom, ns, "desk"))

    # The Ingress routes /webhook only: the admin API is reached with kubectl port-forward.
    ingress = client.NetworkingV1Api(api).read_namespaced_ingress("desk", ns)
    paths = [p.path for rule in ingress.spec.rules for p in rule.http.paths]
    assert paths == ["/webhook"]
    # The worker may reach the notification URL's port.
    policy = client.NetworkingV1Api(api).read_namespaced_network_policy("desk-worker", ns)
    ports = [p.port for rule in policy.spec.egress or [] for p in rule.ports or []]
    assert ports == [notify_port]

    # No schema yet (these pods are not real): the count says why, and the column is empty.
    said = wait_for("a reason for no count", lambda: status_handover(custom, ns, "desk"))
    assert said["reason"] == "NotMigrated" and "held" not in said
    assert table_row(api, ns, "desk")["Held"] is None

    agent_url = base64.b64decode(creds["databaseUrl"]).decode()
    migrate_and_hold(postgres_url, agent_url, number, count=2)
    wait_for(
        "status.handover.held == 2",
        lambda: status_handover(custom, ns, "desk") == {"held": 2},
    )
    assert table_row(api, ns, "desk")["Held"] == 2
    version = get_agent(custom, ns, "desk")["metadata"]["resourceVersion"]  # type: ignore[index]
    # Unchanged counts write nothing (the timer ticks every 2 s, the count is due every 1 s).
    time.sleep(4.5)
    assert get_agent(custom, ns, "desk")["metadata"]["resourceVersion"] == version  # type: ignore[index]

    # Handover off: the bot is told; conversations people hold stay held, and counted.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "desk", {"spec": {"handover": None}}
    )
    wait_for(
        "HANDOVER_ENABLED=false on the worker",
        lambda: env_of(apps, ns, "desk-worker")["HANDOVER_ENABLED"].value == "false",
    )
    assert "HANDOVER_NOTIFY_URL" not in env_of(apps, ns, "desk-worker")
    migrate_and_hold(postgres_url, agent_url, number, count=1)  # a staff echo, say
    wait_for("held == 3", lambda: status_handover(custom, ns, "desk") == {"held": 3})
    assert table_row(api, ns, "desk")["Held"] == 3


def test_a_refused_url_builds_nothing_and_a_missing_key_is_waited_for(
    handover_operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    ns: str,
) -> None:
    secret_ref = {"name": "hmac", "key": "key"}
    create_agent(custom, ns, agent_manifest(
        "inner", phoneNumberId=phone(),
        handover={"notify": {"url": "https://10.1.2.3/x-token", "secretRef": secret_ref}},
    ))  # fmt: skip
    message = wait_blocked(custom, ns, "inner", "HandoverUrlRefused", handover_operator)
    assert "spec.handover.notify.url" in message and "x-token" not in message
    names = {d.metadata.name for d in apps.list_namespaced_deployment(ns).items}
    assert not {n for n in names if n.startswith("inner-")}

    create_agent(custom, ns, agent_manifest(
        "waits", phoneNumberId=phone(),
        handover={"notify": {"url": "https://127.0.0.1:8443/hook", "secretRef": secret_ref}},
    ))  # fmt: skip
    message = wait_blocked(custom, ns, "waits", "SecretNotFound", handover_operator)
    assert "spec.handover.notify.secretRef" in message
    create_hmac_secret(core, ns)
    wait_ready(custom, ns, "waits", handover_operator)
    assert env_of(apps, ns, "waits-worker")["HANDOVER_NOTIFY_SECRET"].value_from
