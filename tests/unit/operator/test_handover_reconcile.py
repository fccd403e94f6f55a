"""Reconciling ``spec.handover``: the notification URL under the platform's policy (admission and
reconcile), its Secret as a precondition a person can act on, and the generated credentials
the admin API and the worker's identifiers use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from whatsapp_operator import credentials as keys
from whatsapp_operator import handover as held
from whatsapp_operator.admission import admission_errors, validate_agent
from whatsapp_operator.config import OperatorSettings
from whatsapp_operator.errors import TemporaryError
from whatsapp_operator.reconcile import checks
from whatsapp_operator.reconcile.inputs import referenced_names
from whatsapp_operator.reconcile.pipeline import reconcile
from whatsapp_operator.reconcile.references import refs_checksum

from .conftest import NS, World, agent_body, make_world, secret, unb64
from .test_tenancy_reconcile import blocked, built

TOKEN = "tok3n-in-the-path"
HMAC = {"name": "hmac", "key": "key"}


def handover(url: str = "https://93.184.216.34/hooks/wa", **fields: Any) -> dict[str, Any]:
    return {"handover": {"notify": {"url": url, "secretRef": HMAC}, **fields}}


def worker_env(world: World) -> dict[str, dict[str, Any]]:
    dep = world.kube.obj("Deployment", NS, "acme-worker")
    assert dep is not None
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


# -- admission ------------------------------------------------------------------------------

ADMIT: dict[str, Any] = {
    "phoneNumberId": "1234567890",
    "faqs": [{"q": "Hours?", "a": "9 to 5."}],
    "secrets": {"meta": {"name": "meta"}, "openai": {"name": "openai"}},
}


def test_admission_refuses_an_internal_notification_address_with_422() -> None:
    spec = {**ADMIT, **handover(f"https://10.0.0.7:8443/{TOKEN}")}
    settings = OperatorSettings()
    (problem,) = admission_errors(spec, "bot", "acme", settings)
    assert problem.startswith("spec.handover.notify.url points at a private or reserved address")
    assert TOKEN not in problem
    with pytest.raises(kopf.AdmissionError) as refused:
        validate_agent(spec, name="bot", namespace="acme")
    assert refused.value.code == 422


def test_admission_lets_through_what_the_platform_allows() -> None:
    spec = {**ADMIT, **handover("https://127.0.0.1:8443/hook")}
    allowing = OperatorSettings(handover_notify_allowed_networks=["127.0.0.0/8"])
    assert admission_errors(spec, "bot", "acme", allowing) == []
    assert admission_errors({**ADMIT, **handover()}, "bot", "acme", OperatorSettings()) == []


# -- reconciliation -------------------------------------------------------------------------


async def test_a_name_resolving_to_loopback_is_refused_and_nothing_is_built(world: World) -> None:
    world.kube.put(secret("hmac", {"key": "k" * 32}))
    world.kube.put(agent_body(**handover(f"https://localhost:8443/{TOKEN}")))
    message = await blocked(world, "HandoverUrlRefused")
    assert "spec.handover.notify.url resolves to a loopback address" in message
    assert TOKEN not in message
    assert built(world) == []


async def test_the_platforms_allowlist_lets_the_tests_fake_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world(monkeypatch, handover_notify_allowed_networks=["127.0.0.0/8", "::1/128"])
    world.kube.put(secret("hmac", {"key": "k" * 32}))
    world.kube.put(agent_body(**handover("https://localhost:8443/hook")))
    await reconcile(world.agent(), retry=0)
    env = worker_env(world)
    assert env["HANDOVER_NOTIFY_URL"]["value"] == "https://localhost:8443/hook"
    assert env["HANDOVER_NOTIFY_SECRET"]["valueFrom"]["secretKeyRef"] == HMAC
    # The key was read (to check it exists) but never copied into any object the operator wrote.
    for kind, name in built(world):
        obj = world.kube.obj(kind, NS, name)
        assert "a2tra2tr" not in str(obj), (kind, name)  # base64 of "kkkkkk"


async def test_an_update_to_a_refused_url_leaves_the_running_bot_alone(world: World) -> None:
    world.kube.put(secret("hmac", {"key": "k" * 32}))
    world.kube.put(agent_body(**handover()))
    await reconcile(world.agent(), retry=0)
    before = worker_env(world)["HANDOVER_NOTIFY_URL"]["value"]
    body = world.kube.obj("WhatsAppAgent", NS, "acme")
    assert body is not None
    body["spec"]["handover"]["notify"]["url"] = "https://169.254.169.254/latest"
    body["metadata"]["generation"] = 2
    world.kube.put(body)
    writes = len(world.kube.written())
    await blocked(world, "HandoverUrlRefused")
    assert [w for w in world.kube.written()[writes:] if w[1] != "WhatsAppAgent"] == []
    assert worker_env(world)["HANDOVER_NOTIFY_URL"]["value"] == before


async def test_a_missing_notification_secret_says_what_to_create(world: World) -> None:
    world.kube.put(agent_body(**handover()))
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    assert "Secret 'hmac' does not exist" in ready["message"]
    assert "spec.handover.notify.secretRef" in ready["message"]
    assert "'key'" in ready["message"]
    assert built(world) == []

    world.kube.put(secret("hmac", {"other": "x"}))
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    ready = world.condition("Ready")
    assert ready["reason"] == "SecretNotFound"
    assert ready["message"].startswith("Secret 'hmac' has no key 'key' (spec.handover.notify")

    world.kube.put(secret("hmac", {"key": "k" * 32}))
    await reconcile(world.agent(), retry=0)
    assert world.condition("Ready")["reason"] != "SecretNotFound"
    assert "HANDOVER_NOTIFY_SECRET" in worker_env(world)


async def test_a_new_notification_key_rolls_the_worker(world: World) -> None:
    world.kube.put(secret("hmac", {"key": "k" * 32}))
    world.kube.put(agent_body(**handover()))
    await reconcile(world.agent(), retry=0)
    first = world.status()["configChecksum"]
    world.kube.put(secret("hmac", {"key": "n" * 32}))
    await reconcile(world.agent(), retry=0)
    assert world.status()["configChecksum"] != first


async def test_a_change_of_the_notification_secret_asks_for_a_pass(world: World) -> None:
    spec = agent_body(**handover())["spec"]
    assert ("Secret", "hmac") in referenced_names(spec)
    before = await refs_checksum(world.kube, NS, spec)
    world.kube.put(secret("hmac", {"key": "k" * 32}))
    assert await refs_checksum(world.kube, NS, spec) != before


async def test_existing_credentials_gain_the_new_keys_and_keep_their_values(world: World) -> None:
    world.kube.put(
        secret("acme-credentials", {keys.REDIS_PASSWORD: "r-old", keys.VERIFY_TOKEN: "v-old"})
    )
    stored = world.kube.obj("Secret", NS, "acme-credentials")
    assert stored is not None
    world.kube.put(agent_body())
    body = world.kube.obj("WhatsAppAgent", NS, "acme")
    assert body is not None
    stored["metadata"]["ownerReferences"] = [
        {"apiVersion": "whatsapp.released.io/v1alpha1", "kind": "WhatsAppAgent", "name": "acme",
         "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    world.kube.put(stored)
    await reconcile(world.agent(), retry=0)
    creds = world.kube.obj("Secret", NS, "acme-credentials")
    assert creds is not None
    values = unb64(creds["data"])
    assert values[keys.REDIS_PASSWORD] == "r-old" and values[keys.VERIFY_TOKEN] == "v-old"
    assert len(values[keys.ADMIN_TOKEN]) >= 40
    assert len(values[keys.SAFETY_IDENTIFIER_SALT]) >= 40
    assert values[keys.ADMIN_TOKEN] != values[keys.SAFETY_IDENTIFIER_SALT]


# -- the held count (the real PostgreSQL: tests/integration/test_held_count.py) ---------------


@pytest.fixture(autouse=True)
def _nothing_remembered() -> Iterator[None]:
    """The in-memory agents' uids repeat from test to test: start with no database URL known."""
    held._urls.clear()
    yield
    held._urls.clear()


def test_the_count_is_due_at_once_then_every_interval() -> None:
    uid = "held-due-test"
    checks.forget(uid)
    assert checks.held_due(uid, 60, now=1000.0)
    assert not checks.held_due(uid, 60, now=1059.0)
    assert checks.held_due(uid, 60, now=1060.0)
    checks.forget(uid)
    assert checks.held_due(uid, 60, now=1061.0)


def provisioned(world: World, **spec: Any) -> None:
    world.kube.put(agent_body(database=None, **spec))
    world.kube.put(
        secret("acme-credentials", {keys.DATABASE_URL: "postgresql://r_a:pw@pg.pods:5432/db_x"})
    )


async def test_the_count_goes_to_the_status_as_the_agent_at_the_admins_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world(monkeypatch, postgres_admin_url="postgresql://admin:a@pg.ops:6432/postgres")
    provisioned(world, handover={})
    asked: list[tuple[str, str]] = []

    async def count(url: str, phone_number_id: str) -> int:
        asked.append((url, phone_number_id))
        return 4

    monkeypatch.setattr(held, "count_held", count)
    assert await checks.count_held(world.agent()) == {"held": 4}
    assert world.status()["handover"] == {"held": 4}
    assert asked == [("postgresql://r_a:pw@pg.ops:6432/db_x", "1234567890")]
    # The URL is remembered: the next count needs nothing from the API server.
    secret_before = world.kube.objects.pop(("Secret", NS, "acme-credentials"))
    assert await checks.count_held(world.agent()) == {"held": 4}
    assert len(asked) == 2
    world.kube.put(secret_before)

    async def refused(url: str, phone_number_id: str) -> int:
        raise held.HeldCountFailed("DatabaseRejected", "refused its current role")

    monkeypatch.setattr(held, "count_held", refused)
    assert await checks.count_held(world.agent()) == {
        "reason": "DatabaseRejected", "message": "refused its current role"
    }  # fmt: skip
    assert world.status()["handover"] == {
        "reason": "DatabaseRejected", "message": "refused its current role"
    }  # fmt: skip
    # A refused role (a rotation meanwhile): the Secret is read again next time.
    assert held.known_url(world.agent().uid) is None


async def test_holds_are_counted_without_spec_handover_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Staff replying from the WhatsApp Business app hold a conversation whatever the spec."""
    world = make_world(monkeypatch, postgres_admin_url="postgresql://admin:a@pg.ops:6432/postgres")
    provisioned(world)

    async def count(url: str, phone_number_id: str) -> int:
        return 1

    monkeypatch.setattr(held, "count_held", count)
    assert await checks.count_held(world.agent()) == {"held": 1}
    # An agent with its own database and no spec.handover: nothing to say, nothing written.
    own = make_world(monkeypatch, postgres_admin_url="postgresql://admin:a@pg.ops:6432/postgres")
    own.kube.put(agent_body())
    writes = len(own.kube.written())
    assert await checks.count_held(own.agent()) is None
    assert len(own.kube.written()) == writes
    own.kube.put(agent_body(handover={}))
    said = await checks.count_held(own.agent())
    assert said is not None and said["reason"] == "OwnDatabase"


async def test_nothing_is_counted_or_written_before_there_is_something_to_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def count(url: str, phone_number_id: str) -> int:
        raise AssertionError("not to be counted")

    monkeypatch.setattr(held, "count_held", count)
    # No shared PostgreSQL; no credentials yet; an unusable databaseUrl; a blocked agent.
    no_admin = make_world(monkeypatch)
    no_admin.kube.put(agent_body(database=None, handover={}))
    admin = "postgresql://admin:a@pg.ops:6432/postgres"
    no_secret = make_world(monkeypatch, postgres_admin_url=admin)
    no_secret.kube.put(agent_body(database=None, handover={}))
    bad_url = make_world(monkeypatch, postgres_admin_url=admin)
    bad_url.kube.put(agent_body(database=None, handover={}))
    bad_url.kube.put(secret("acme-credentials", {keys.DATABASE_URL: "mysql://x"}))
    blocked_world = make_world(monkeypatch, postgres_admin_url=admin)
    provisioned(blocked_world, handover={})
    body = blocked_world.kube.obj("WhatsAppAgent", NS, "acme")
    assert body is not None
    body["status"] = {"conditions": [{"type": "Ready", "status": "False",
                                      "reason": "InvalidSpec"}]}  # fmt: skip
    blocked_world.kube.put(body)
    for w in (no_admin, no_secret, bad_url, blocked_world):
        writes = len(w.kube.written())
        assert await checks.count_held(w.agent()) is None
        assert len(w.kube.written()) == writes


async def test_an_unparsable_spec_leaves_the_status_alone(world: World) -> None:
    body = agent_body(handover={"holdDuration": "forever"})
    body["status"] = {"handover": {"held": 1}}
    world.kube.put(body)
    writes = len(world.kube.written())
    assert await checks.count_held(world.agent()) == {"held": 1}
    assert len(world.kube.written()) == writes
