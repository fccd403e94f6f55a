"""Reconciliation refuses what the platform does not allow, and builds nothing from it.

The same checks as the admission webhook (the platform's policy) plus what only the cluster
shows: the Meta Secret's values, the OpenAI ``baseUrl``, objects of the children's names that
someone else made. Each ends the pass with ``Ready=False``, its reason and a Warning Event,
before the credentials Secret, the database or any child is written.
"""

from __future__ import annotations

from typing import Any

import pytest
from whatsapp_operator.applying import APPLIED_HASH
from whatsapp_operator.builders import owner_reference
from whatsapp_operator.database import connection_limit
from whatsapp_operator.reconcile.pipeline import reconcile

from .conftest import NS, World, agent_body, make_world, secret

OWNED_KINDS = ("Deployment", "Service", "ConfigMap", "ServiceAccount", "Ingress", "NetworkPolicy")


def built(world: World, name: str = "acme") -> list[tuple[str, str]]:
    """Objects the operator made for agent ``name`` (by its instance label)."""
    out = []
    for kind in (*OWNED_KINDS, "Secret", "PersistentVolumeClaim", "PodDisruptionBudget"):
        for obj in world.kube.of_kind(kind, NS):
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if labels.get("app.kubernetes.io/instance") == name:
                out.append((kind, obj["metadata"]["name"]))
    return out


async def blocked(world: World, reason: str, name: str = "acme") -> str:
    agent = world.agent(name)
    await reconcile(agent, retry=0)
    ready = world.condition("Ready", name)
    assert (ready["status"], ready["reason"]) == ("False", reason), ready
    assert reason in agent.events.reasons()
    return str(ready["message"])


async def test_a_host_outside_the_namespaces_suffix_builds_nothing(world: World) -> None:
    world.kube.put(agent_body(ingress={"host": "acme.other-company.com"}))
    message = await blocked(world, "PolicyViolation")
    assert "spec.ingress.host 'acme.other-company.com'" in message
    assert built(world) == []


async def test_an_update_the_policy_refuses_leaves_what_was_built(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    before = {key: world.kube.obj(*key[:1], NS, key[1]) for key in built(world)}
    assert ("Ingress", "acme") in before
    body = world.kube.obj("WhatsAppAgent", NS, "acme")
    assert body is not None
    body["spec"]["ingress"]["annotations"] = {"nginx.ingress.kubernetes.io/server-snippet": "x"}
    body["metadata"]["generation"] = 2
    world.kube.put(body)
    writes = len(world.kube.written())
    message = await blocked(world, "PolicyViolation")
    assert "server-snippet" in message
    assert [w for w in world.kube.written()[writes:] if w[1] != "WhatsAppAgent"] == []
    ingress = world.kube.obj("Ingress", NS, "acme")
    assert ingress is not None
    assert set(ingress["metadata"].get("annotations") or {}) == {APPLIED_HASH}


@pytest.mark.parametrize("app_secret", ["REPLACE_ME", "not-a-meta-app-secret"])
async def test_a_placeholder_app_secret_removes_the_ingress_and_builds_nothing(
    world: World, app_secret: str
) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    assert world.kube.obj("Ingress", NS, "acme") is not None
    world.kube.put(secret("meta", {"accessToken": "EAAtoken123456789", "appSecret": app_secret}))
    writes = len(world.kube.written())
    message = await blocked(world, "InvalidMetaSecret")
    assert "appSecret" in message and "not-a-meta-app-secret" not in message
    assert world.kube.obj("Ingress", NS, "acme") is None
    others = [w for w in world.kube.written()[writes:] if w[1] != "WhatsAppAgent"]
    # The replaced Secret is labelled again (so that its fix is noticed); nothing is built.
    assert others == [("patch", "Secret", "meta"), ("delete", "Ingress", "acme")]


async def test_a_new_agent_with_a_placeholder_gets_no_ingress(world: World) -> None:
    world.kube.put(secret("meta", {"accessToken": "REPLACE_ME", "appSecret": "REPLACE_ME"}))
    world.kube.put(agent_body())
    message = await blocked(world, "InvalidMetaSecret")
    assert "REPLACE_ME" in message  # the placeholder's name, not a secret
    assert built(world) == []


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://10.96.0.1/v1", "allows no other base URL"),
        ("http://169.254.169.254/latest", "https://"),
    ],
)
async def test_a_tenant_openai_base_url_outside_the_policy_builds_nothing(
    world: World, url: str, fragment: str
) -> None:
    world.kube.put(secret("openai", {"apiKey": "sk-test-key-1234", "baseUrl": url}))
    world.kube.put(agent_body())
    message = await blocked(world, "OpenAIBaseUrlRefused")
    assert fragment in message and url not in message
    assert built(world) == []
    assert world.outside.named("ensure_knowledge") == []


async def test_an_allowlisted_base_url_resolving_inside_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world(monkeypatch, openai_allowed_base_urls=["https://localhost/v1"])
    world.kube.put(
        secret("openai", {"apiKey": "sk-test-key-1234", "baseUrl": "https://localhost/v1"})
    )
    world.kube.put(agent_body())
    message = await blocked(world, "OpenAIBaseUrlRefused")
    assert "loopback" in message
    assert built(world) == []


@pytest.mark.parametrize(
    ("kind", "name", "api_version", "extra"),
    [
        ("Deployment", "acme-web", "apps/v1", {"spec": {"replicas": 3}}),
        ("Secret", "acme-credentials", "v1", {"data": {}}),
        ("Service", "acme-redis", "v1", {"spec": {}}),
        ("Ingress", "acme", "networking.k8s.io/v1", {"spec": {}}),
    ],
)
async def test_objects_someone_else_made_are_never_adopted(
    world: World, kind: str, name: str, api_version: str, extra: dict[str, Any]
) -> None:
    foreign = {"apiVersion": api_version, "kind": kind,
               "metadata": {"name": name, "namespace": NS, "labels": {"team": "billing"}},
               **extra}  # fmt: skip
    world.kube.put(foreign)
    stored = world.kube.obj(kind, NS, name)
    world.kube.put(agent_body())
    message = await blocked(world, "Conflict")
    assert f"{kind}/{name}" in message and "untouched" in message
    assert world.kube.obj(kind, NS, name) == stored
    assert built(world) == []


async def test_an_object_of_another_agent_of_the_same_name_is_foreign(world: World) -> None:
    old = owner_reference("acme", "uid-of-a-deleted-acme")
    world.kube.put({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "acme-faqs", "namespace": NS, "ownerReferences": [old]},
                    "data": {}})  # fmt: skip
    world.kube.put(agent_body())
    assert "ConfigMap/acme-faqs" in await blocked(world, "Conflict")


async def test_the_database_gets_a_connection_limit_from_replicas(
    pg_world: World,
) -> None:
    pg_world.kube.put(
        agent_body(database=None, web={"replicas": 2}, worker={"replicas": 3, "concurrency": 4})
    )
    await reconcile(pg_world.agent(), retry=0)
    assert pg_world.outside.connection_limits["shop/acme"] == connection_limit(2, 3)
