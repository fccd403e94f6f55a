"""The operator and the outside world on a real control plane, against the contract-checked fakes.

What changes outside the cluster, with no change to the agent: OpenAI shuts the agent's model
down on the fake's clock, Meta revokes the token, the app's subscription to the WABA is missing
or removed, the vector store is deleted. A second operator process watches the ``ow-*``
namespaces with the outside world checked every 2 seconds (``RELEASED_CHECK_INTERVAL``), so the
session's operator (``op-*``, checked every 10 minutes) is not disturbed. Every wait is bounded;
each test puts the fakes back as they were.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client

from released.fakes import FakeMeta, FakeOpenAI
from released.fakes.meta import DEFAULT_ACCESS_TOKEN
from released.fakes.openai import DEFAULT_API_KEY
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

pytestmark = pytest.mark.k8s

REGISTER = {"host": "ow.bots.example.com", "webhook": {"register": True}}


@pytest.fixture(scope="module")
def outside_operator(
    api: client.ApiClient,
    operator_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    env = {**operator_env, "RELEASED_NAMESPACES": "ow-*", "RELEASED_CHECK_INTERVAL": "2"}
    proc = OperatorProcess(env, tmp_path_factory.mktemp("outside-operator"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def ns(core: client.CoreV1Api) -> Iterator[str]:
    with agent_namespace(core, "ow") as name:
        yield name


def wait_condition(
    custom: client.CustomObjectsApi,
    ns: str,
    name: str,
    type_: str,
    operator: OperatorProcess,
    *,
    status: str,
    reason: str | None = None,
    timeout: float = 45,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        cond = condition(get_agent(custom, ns, name), type_)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return cond
        return None

    try:
        return wait_for(f"{type_}={status} ({reason})", probe, timeout=timeout)
    except AssertionError:
        agent = get_agent(custom, ns, name) or {}
        raise AssertionError(
            f"{type_} is not {status}/{reason}: {(agent.get('status') or {}).get('conditions')}"
            f"\noperator log:\n{operator.log_tail()}"
        ) from None


def warning_events(core: client.CoreV1Api, ns: str, name: str) -> dict[str, str]:
    """reason -> message of the Warning Events about agent ``name``."""
    events = core.list_namespaced_event(ns).items
    return {
        e.reason: e.message
        for e in events
        if e.type == "Warning" and e.involved_object.name == name
    }


def table_row(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    """The agent as ``kubectl get waa`` shows it (the server's Table: the printer columns)."""
    method, url, headers, body, _ = api.param_serialize(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{name}",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=body)
    response.read()
    table = json.loads(response.data)
    names = [c["name"] for c in table["columnDefinitions"]]
    (row,) = table["rows"]
    return dict(zip(names, row["cells"], strict=True))


# ---------------------------------------------------------------------------------------------


def test_a_model_shutdown_is_warned_ahead_and_reported_after(
    outside_operator: OperatorProcess,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    ns: str,
    fake_openai: FakeOpenAI,
) -> None:
    # An agent created before the default changed still holds gpt-4.1-mini in its spec.
    body = agent_manifest("old", phoneNumberId=phone(), assistant={"model": "gpt-4.1-mini"})
    create_agent(custom, ns, body)
    agent = wait_ready(custom, ns, "old", outside_operator)
    cond = condition(agent, "ModelAvailable")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "ShutdownAnnounced")
    message = "gpt-4.1-mini shuts down on 2027-01-14; set spec.assistant.model to gpt-6-luna"
    assert cond["message"] == message
    wait_for(
        "the ModelShutdownAnnounced Warning",
        lambda: warning_events(core, ns, "old").get("ModelShutdownAnnounced") == message,
    )
    row = table_row(api, ns, "old")
    assert (row["Model"], row["Model-Status"], row["Ready"]) == (
        "gpt-4.1-mini",
        "ShutdownAnnounced",
        "True",
    )

    try:
        # OpenAI's clock passes the shutdown: the periodic check sees it, no spec change.
        fake_openai.set_clock("2027-01-15T00:00:00Z")
        gone = wait_condition(
            custom, ns, "old", "ModelAvailable", outside_operator,
            status="False", reason="ModelShutDown",
        )
        assert "set spec.assistant.model to gpt-6-luna" in gone["message"]
        ready = condition(get_agent(custom, ns, "old"), "Ready")
        assert ready is not None and (ready["status"], ready["reason"]) == (
            "False",
            "ModelShutDown",
        )
        assert table_row(api, ns, "old")["Model-Status"] == "ModelShutDown"

        # The person does what the message says.
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "old", {"spec": {"assistant": {"model": "gpt-6-luna"}}}
        )
        wait_condition(
            custom, ns, "old", "ModelAvailable", outside_operator,
            status="True", reason="Available",
        )
        wait_ready(custom, ns, "old", outside_operator)
    finally:
        fake_openai.real_clock()


def test_the_operator_subscribes_the_app_and_then_registers_the_webhook(
    outside_operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    ns: str,
    fake_meta: FakeMeta,
) -> None:
    waba, number = phone(), phone()
    fake_meta.add_phone_number(number, waba_id=waba)
    fake_meta.set_subscribed(waba, False)
    body = agent_manifest("sub", phoneNumberId=number, businessAccountId=waba, ingress=REGISTER)
    create_agent(custom, ns, body)
    agent = wait_ready(custom, ns, "sub", outside_operator, timeout=90)
    assert fake_meta.subscribed(waba)
    assert fake_meta.webhook_override(number) == "https://ow.bots.example.com/webhook"
    cond = condition(agent, "WabaSubscribed")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Subscribed")

    # The subscription is removed and may not be made again for now: no message arrives, so
    # neither the subscription nor the webhook is reported True.
    subscribe = "POST /{version}/{waba_id}/subscribed_apps"
    fake_meta.script_errors([{"kind": "permission", "times": 10_000, "endpoint": subscribe}])
    try:
        fake_meta.set_subscribed(waba, False)
        wait_condition(
            custom, ns, "sub", "WabaSubscribed", outside_operator,
            status="False", reason="NotSubscribed",
        )
        wait_condition(
            custom, ns, "sub", "WebhookRegistered", outside_operator,
            status="False", reason="WabaNotSubscribed",
        )
        assert condition(get_agent(custom, ns, "sub"), "Ready")["status"] == "False"  # type: ignore[index]
    finally:
        fake_meta.clear_errors()
    # Allowed again: the next check subscribes it, and a pass registers the callback again.
    wait_ready(custom, ns, "sub", outside_operator, timeout=60)
    assert fake_meta.subscribed(waba)
    assert condition(get_agent(custom, ns, "sub"), "WebhookRegistered")["status"] == "True"  # type: ignore[index]


def test_a_waba_level_override_survives_the_operators_checks(
    outside_operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    ns: str,
    fake_meta: FakeMeta,
) -> None:
    waba, number = phone(), phone()
    fake_meta.add_phone_number(number, waba_id=waba)
    # The client's own tooling subscribed the app with a WABA-level callback override.
    response = httpx.post(
        f"{fake_meta.url}/{waba}/subscribed_apps",
        headers={"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"},
        json={"override_callback_uri": "https://crm.example.com/hook", "verify_token": "crm"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    reads_before = len(fake_meta.requests("GET /{version}/{waba_id}/subscribed_apps"))
    create_agent(
        custom, ns, agent_manifest("keep", phoneNumberId=number, businessAccountId=waba)
    )
    wait_ready(custom, ns, "keep", outside_operator)
    # Several periodic checks later the override is still there: the operator never posted.
    wait_for(
        "three checks of the subscription",
        lambda: len(fake_meta.requests("GET /{version}/{waba_id}/subscribed_apps"))
        >= reads_before + 3,
    )
    assert fake_meta.webhooks()["wabas"][waba]["override_callback_uri"] == (
        "https://crm.example.com/hook"
    )
    posts = [
        r
        for r in fake_meta.requests("POST /{version}/{waba_id}/subscribed_apps")
        if r["path"].endswith(f"/{waba}/subscribed_apps")
    ]
    assert len(posts) == 1  # the client's own


def test_a_revoked_token_is_reported_and_recovers(
    outside_operator: OperatorProcess,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    ns: str,
    fake_meta: FakeMeta,
) -> None:
    create_agent(custom, ns, agent_manifest("tok", phoneNumberId=phone()))
    wait_ready(custom, ns, "tok", outside_operator)
    try:
        fake_meta.revoke_token()
        cond = wait_condition(
            custom, ns, "tok", "MetaAccountHealthy", outside_operator,
            status="False", reason="TokenRejected",
        )
        assert "code 190, subcode 460" in cond["message"]
        assert "spec.secrets.meta" in cond["message"]
        assert DEFAULT_ACCESS_TOKEN not in cond["message"]
        ready = condition(get_agent(custom, ns, "tok"), "Ready")
        assert ready is not None and (ready["status"], ready["reason"]) == (
            "False",
            "TokenRejected",
        )
        wait_for("the TokenRejected Warning", lambda: "TokenRejected" in warning_events(
            core, ns, "tok"))
    finally:
        fake_meta.set_token_state("valid")
    wait_condition(
        custom, ns, "tok", "MetaAccountHealthy", outside_operator, status="True", reason="Healthy"
    )
    wait_ready(custom, ns, "tok", outside_operator)


def test_a_deleted_vector_store_is_recreated(
    outside_operator: OperatorProcess,
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    ns: str,
    fake_openai: FakeOpenAI,
) -> None:
    create_agent(custom, ns, agent_manifest("kb", phoneNumberId=phone()))
    agent = wait_ready(custom, ns, "kb", outside_operator)
    old = agent["status"]["knowledge"]["vectorStoreId"]
    indexing = fake_openai.config().get("indexing_seconds", 0.2)
    fake_openai.configure(indexing_seconds=4)  # long enough to see KnowledgeReady=False
    try:
        response = httpx.delete(
            f"{fake_openai.url}/vector_stores/{old}",
            headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        missing = wait_condition(
            custom, ns, "kb", "KnowledgeReady", outside_operator,
            status="False", reason="VectorStoreMissing",
        )
        assert old in missing["message"]
        assert condition(get_agent(custom, ns, "kb"), "Ready")["status"] == "False"  # type: ignore[index]
    finally:
        with contextlib.suppress(Exception):
            fake_openai.configure(indexing_seconds=indexing)
    agent = wait_ready(custom, ns, "kb", outside_operator, timeout=90)
    new = agent["status"]["knowledge"]["vectorStoreId"]
    assert new != old
    stores = {vs["id"]: vs for vs in fake_openai.vector_stores()}
    assert new in stores and old not in stores
    assert len(stores[new]["file_ids"]) == 1
    assert "VectorStoreMissing" in warning_events(core, ns, "kb")

    def worker_uses_new_store() -> bool:
        dep = apps.read_namespaced_deployment("kb-worker", ns)
        env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env}
        return env.get("OPENAI_VECTOR_STORE_ID") == new

    wait_for("the worker to get the new store", worker_uses_new_store)
