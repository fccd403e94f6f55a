"""What happens between passes: Deployment events and the timer (``WorkloadsReady``), changes of
referenced Secrets/ConfigMaps, and the deletion of an agent (``cleanup``)."""

from __future__ import annotations

from typing import Any

import pytest
from whatsapp_operator.errors import TemporaryError
from whatsapp_operator.reconcile.cleanup import cleanup
from whatsapp_operator.reconcile.inputs import referenced_names
from whatsapp_operator.reconcile.parts import workloads
from whatsapp_operator.reconcile.pipeline import reconcile
from whatsapp_operator.reconcile.references import (
    RECONCILE_ANNOTATION,
    REFS_ANNOTATION,
    touch_agent,
    touch_referencing,
)

from .conftest import NS, World, agent_body, b64
from .fake_kube import RecordedEvents


class EventsFor:
    def __init__(self) -> None:
        self.recorded = RecordedEvents()

    def __call__(self, body: Any) -> RecordedEvents:
        return self.recorded


# -- workloads ------------------------------------------------------------------------------


async def test_refresh_follows_the_rollout(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    events = EventsFor()
    await workloads.refresh(world.kube, NS, "acme", events)
    assert world.condition("WorkloadsReady")["reason"] == "RolloutInProgress"
    assert events.recorded.events == []

    world.roll_out()
    await workloads.refresh(world.kube, NS, "acme", events)
    assert world.condition("WorkloadsReady")["status"] == "True"
    assert world.condition("Ready")["status"] == "True"
    assert events.recorded.reasons() == ["WorkloadsReady"]
    annotations = world.kube.obj("WhatsAppAgent", NS, "acme")["metadata"].get("annotations") or {}
    assert RECONCILE_ANNOTATION not in annotations  # no webhook to register


async def test_ready_workloads_ask_for_the_webhook_registration(world: World) -> None:
    ingress = {"host": "acme.bots.example.com", "webhook": {"register": True}}
    world.kube.put(agent_body(ingress=ingress))
    await reconcile(world.agent(), retry=0)
    world.roll_out()
    await workloads.refresh(world.kube, NS, "acme", EventsFor())
    annotations = world.kube.obj("WhatsAppAgent", NS, "acme")["metadata"]["annotations"]
    assert annotations[RECONCILE_ANNOTATION].endswith("Z")


async def test_refresh_leaves_a_blocked_agent_alone(world: World) -> None:
    world.kube.put(agent_body(database=None))
    await reconcile(world.agent(), retry=0)  # DatabaseNotConfigured
    writes = len(world.kube.writes)
    await workloads.refresh(world.kube, NS, "acme", EventsFor())
    await workloads.refresh(world.kube, NS, "gone", EventsFor())
    assert len(world.kube.writes) == writes
    assert world.condition("Ready")["reason"] == "DatabaseNotConfigured"


async def test_suspended_agent(world: World) -> None:
    world.kube.put(agent_body(suspend=True))
    await reconcile(world.agent(), retry=0)
    assert world.condition("WorkloadsReady")["reason"] == "Suspended"
    for name in ("acme-web", "acme-worker", "acme-redis"):
        assert world.kube.obj("Deployment", NS, name)["spec"]["replicas"] == 0
    # Retention holds while suspended: the purge keeps its schedule.
    purge = world.kube.obj("CronJob", NS, "acme-purge")
    assert purge["apiVersion"] == "batch/v1beta1"  # what Kubernetes 1.20 serves
    assert purge["spec"]["suspend"] is False


# -- references -----------------------------------------------------------------------------


def test_referenced_names() -> None:
    spec = agent_body(
        faqs=None,
        faqsFrom={"configMapKeyRef": {"name": "faq", "key": "f"}},
        ingress={"host": "a.example.com", "tlsSecretName": "tls"},
    )["spec"]
    assert sorted(referenced_names(spec)) == [
        ("ConfigMap", "faq"),
        ("Secret", "db"),
        ("Secret", "meta"),
        ("Secret", "openai"),
        ("Secret", "tls"),
    ]
    assert referenced_names({}) == []


async def test_a_changed_reference_asks_for_one_reconciliation(world: World) -> None:
    world.kube.put(agent_body())
    assert await touch_agent(world.kube, NS, "acme")
    first = world.kube.obj("WhatsAppAgent", NS, "acme")["metadata"]["annotations"][REFS_ANNOTATION]
    assert not await touch_agent(world.kube, NS, "acme")  # nothing changed since

    world.kube.put(
        {**world.kube.obj("Secret", NS, "openai"), "data": {"apiKey": b64("sk-other-1")}}
    )
    await touch_referencing(world.kube, NS, ["acme", "acme", "gone"])
    second = world.kube.obj("WhatsAppAgent", NS, "acme")["metadata"]["annotations"][REFS_ANNOTATION]
    assert second != first
    assert b64("sk-other-1") not in second and "sk-other" not in second


async def test_a_deleting_agent_is_not_touched(world: World) -> None:
    body = agent_body()
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    world.kube.put(body)
    assert not await touch_agent(world.kube, NS, "acme")


# -- cleanup --------------------------------------------------------------------------------


def _deleting(world: World, **status: Any) -> Any:
    body = world.kube.obj("WhatsAppAgent", NS, "acme")
    body["status"] = {**(body.get("status") or {}), **status}
    world.kube.put(body)
    return world.agent()


async def test_cleanup_removes_what_lives_outside(pg_world: World) -> None:
    pg_world.kube.put(agent_body(database=None))
    await reconcile(pg_world.agent(), retry=0)
    agent = _deleting(pg_world, webhookUrl="https://acme.bots.example.com/webhook")
    await cleanup(agent, retry=0)
    ((params, state, key),) = pg_world.outside.named("delete_knowledge")
    assert state.vector_store_id == "vs_1" and key == f"{NS}/acme"
    assert params.api_key.get_secret_value().startswith("sk-")
    ((_graph, number, token),) = pg_world.outside.named("unregister_callback")
    assert number == "1234567890" and token.startswith("EAA")
    assert pg_world.outside.named("drop_database") == [f"{NS}/acme"]
    assert agent.events.reasons() == ["CleanedUp"]


async def test_cleanup_keeps_databases_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from .conftest import make_world

    world = make_world(
        monkeypatch,
        postgres_admin_url="postgresql://admin:admin@pg:5432/postgres",
        keep_databases=True,
    )
    world.kube.put(agent_body(database=None))
    agent = world.agent()
    await cleanup(agent, retry=0)
    assert world.outside.named("drop_database") == []
    assert agent.events.reasons() == ["DatabaseKept", "CleanedUp"]


async def test_cleanup_retries_then_gives_up(world: World) -> None:
    world.kube.put(agent_body())
    world.outside.knowledge_error = TemporaryError("OpenAI is down", reason="OpenAIUnavailable")
    agent = world.agent()
    with pytest.raises(TemporaryError) as raised:
        await cleanup(agent, retry=1)
    assert raised.value.delay == 10.0
    assert "OpenAI knowledge: OpenAI is down" in raised.value.message
    assert agent.events.reasons() == ["CleanupRetrying"]

    last = world.settings.cleanup_max_attempts - 1
    agent = world.agent()
    await cleanup(agent, retry=last)  # returns: the finalizer goes
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "CleanupFailed")
    assert "may be left behind: OpenAI knowledge" in ready["message"]
    assert agent.events.reasons() == ["CleanupFailed"]


async def test_cleanup_of_an_agent_whose_secret_is_gone(world: World) -> None:
    world.kube.objects.pop(("Secret", NS, "openai"))
    world.kube.put(agent_body())
    with pytest.raises(TemporaryError, match="Secret 'openai' does not exist"):
        await cleanup(world.agent(), retry=0)


async def test_cleanup_survives_an_unexpected_error(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whatsapp_operator.reconcile import cleanup as cleanup_module

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cleanup_module, "delete_knowledge", broken)
    world.kube.put(agent_body())
    with pytest.raises(TemporaryError) as raised:
        await cleanup(world.agent(), retry=0)
    assert raised.value.message == "OpenAI knowledge: RuntimeError"  # no details of the bug
