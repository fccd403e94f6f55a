"""One reconciliation pass (``whatsapp_operator.reconcile.pipeline``) against an in-memory API.

What a person sees after a pass: the children in the namespace, the agent's conditions and
fields, the Events, and whether (and when) the pass is retried.
"""

from __future__ import annotations

import time

import pytest
from whatsapp_operator import credentials as keys
from whatsapp_operator import metrics
from whatsapp_operator.errors import PermanentError, TemporaryError
from whatsapp_operator.reconcile import checks
from whatsapp_operator.reconcile.context import MAX_BACKOFF, backoff
from whatsapp_operator.reconcile.parts import workloads
from whatsapp_operator.reconcile.pipeline import reconcile

from .conftest import DB_NAME, NS, OPENAI_KEY, ROLE_A, World, agent_body, b64, unb64

CHILD_KINDS = {
    "ServiceAccount": 1,
    "ConfigMap": 1,
    "PersistentVolumeClaim": 1,
    "Service": 3,
    "NetworkPolicy": 5,
    "Deployment": 3,
    "CronJob": 1,
    "PodDisruptionBudget": 1,
    "Ingress": 1,
}


def children(world: World) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (kind, ns, _name), obj in world.kube.objects.items():
        labels = obj["metadata"].get("labels") or {}
        if ns == NS and labels.get("app.kubernetes.io/managed-by") == "released-operator":
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def reconciles(outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "released_operator_reconciles_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_first_pass_creates_every_child_and_waits_for_the_rollout(world: World) -> None:
    world.kube.put(agent_body())
    agent = world.agent()
    await reconcile(agent, retry=0)

    assert children(world) == {**CHILD_KINDS, "Secret": 1}
    pdb = world.kube.obj("PodDisruptionBudget", NS, "acme-web")
    assert pdb is not None and pdb["apiVersion"] == "policy/v1beta1"  # Kubernetes 1.20
    credentials = unb64(world.kube.obj("Secret", NS, "acme-credentials")["data"])
    assert set(credentials) == {
        keys.REDIS_PASSWORD,
        keys.VERIFY_TOKEN,
        keys.ADMIN_TOKEN,
        keys.SAFETY_IDENTIFIER_SALT,
    }

    status = world.status()
    assert status["observedGeneration"] == 1
    assert status["knowledge"] == {"vectorStoreId": "vs_1", "fileId": "file_1", "faqHash": "h2"}
    assert len(status["configChecksum"]) == 64
    assert world.condition("KnowledgeReady")["status"] == "True"
    assert world.condition("WorkloadsReady")["reason"] == "RolloutInProgress"
    assert world.condition("WebhookRegistered")["reason"] == "NotRequested"
    assert world.condition("CredentialsRotated")["reason"] == "UpToDate"
    assert world.condition("Ready")["status"] == "False"
    assert agent.events.reasons() == ["CredentialsCreated", "KnowledgeSynced"]

    # The web tier got the vector store's id in its first rollout.
    web = world.kube.obj("Deployment", NS, "acme-web")
    assert "vs_1" in str(web)

    world.roll_out()
    agent = world.agent()
    await reconcile(agent, retry=0)
    assert world.condition("Ready")["status"] == "True"
    assert agent.events.reasons() == ["Ready"]


async def test_a_pass_reads_each_secret_once(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    assert world.kube.reads[("Secret", "openai")] == 1
    assert world.kube.reads[("Secret", "meta")] == 1
    assert world.kube.reads[("Secret", "db")] == 1
    # The knowledge part was given the key from that one read.
    ((params, key, faqs, _current),) = world.outside.named("ensure_knowledge")
    assert params.api_key.get_secret_value() == OPENAI_KEY and key == f"{NS}/acme"
    assert len(faqs) == 2


async def test_generated_credentials_are_never_overwritten(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    first = world.kube.obj("Secret", NS, "acme-credentials")["data"]
    await reconcile(world.agent(), retry=0)
    assert world.kube.obj("Secret", NS, "acme-credentials")["data"] == first


async def test_an_unchanged_agent_writes_no_status(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    world.roll_out()
    await reconcile(world.agent(), retry=0)
    before = len(world.kube.written("WhatsAppAgent"))
    await reconcile(world.agent(), retry=0)
    assert len(world.kube.written("WhatsAppAgent")) == before


async def test_invalid_spec_is_reported_and_touches_nothing(world: World) -> None:
    body = agent_body(faqs=[{"q": "Same?", "a": "one"}, {"q": "same", "a": "two"}])
    world.kube.put(body)
    invalid = reconciles("invalid")
    agent = world.agent()
    await reconcile(agent, retry=0)  # no retry: a person must change the manifest
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.faqs" in ready["message"]
    assert children(world) == {}
    assert world.outside.calls == []
    assert agent.events.reasons() == ["InvalidSpec"]
    assert reconciles("invalid") == invalid + 1


async def test_missing_secret_blocks_before_anything_is_written(world: World) -> None:
    world.kube.objects.pop(("Secret", NS, "openai"))
    world.kube.put(agent_body())
    with pytest.raises(TemporaryError) as raised:
        await reconcile(world.agent(), retry=2)
    assert raised.value.delay == backoff(2) == 20.0
    ready = world.condition("Ready")
    assert (ready["reason"], ready["message"]) == (
        "SecretNotFound",
        f"Secret 'openai' does not exist in namespace {NS!r}",
    )
    assert children(world) == {}  # not even the credentials Secret


async def test_missing_key_names_the_secret_and_the_key(world: World) -> None:
    world.kube.put({**world.kube.obj("Secret", NS, "meta"), "data": {"accessToken": b64("t")}})
    world.kube.put(agent_body())
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    assert world.condition("Ready")["message"] == "Secret 'meta' has no key 'appSecret'"


async def test_without_a_database_the_agent_says_so(world: World) -> None:
    world.kube.put(agent_body(database=None))
    await reconcile(world.agent(), retry=0)
    ready = world.condition("Ready")
    assert ready["reason"] == "DatabaseNotConfigured"
    assert "postgresAdminUrl" in ready["message"]
    assert children(world) == {}


async def test_faqs_from_a_configmap(world: World) -> None:
    world.kube.put(agent_body(faqs=None, faqsFrom={"configMapKeyRef": {"name": "faq", "key": "f"}}))
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    assert world.condition("Ready")["reason"] == "FaqsNotFound"

    world.kube.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "faq", "namespace": NS},
            "data": {"f": "not: a list"},
        }
    )
    await reconcile(world.agent(), retry=0)
    assert world.condition("Ready")["reason"] == "InvalidFaqs"

    world.kube.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "faq", "namespace": NS},
            "data": {"f": '[{"q": "Parking?", "a": "Behind the shop."}]'},
        }
    )
    await reconcile(world.agent(), retry=0)
    faqs = world.kube.obj("ConfigMap", NS, "acme-faqs")["data"]["faqs.json"]
    assert "Behind the shop." in faqs


async def test_knowledge_failure_is_reported_and_the_rest_goes_on(world: World) -> None:
    world.outside.knowledge_error = TemporaryError(
        "OpenAI is rate limiting", reason="OpenAIRateLimited", delay=60.0
    )
    world.kube.put(agent_body())
    with pytest.raises(TemporaryError) as raised:
        await reconcile(world.agent(), retry=0)
    assert raised.value.delay == 60.0
    knowledge = world.condition("KnowledgeReady")
    assert (knowledge["status"], knowledge["reason"]) == ("False", "OpenAIRateLimited")
    assert world.condition("Ready")["reason"] == "RolloutInProgress"  # the parts' order wins
    assert children(world)["Deployment"] == 3


async def test_the_beat_of_earlier_versions_goes_but_a_foreign_one_stays(world: World) -> None:
    """Upgrading from the Celery beat Deployment to the purge CronJob removes what the agent
    made (``NAME-beat``), never an object of that name that someone else made."""
    agent = world.kube.put(agent_body())
    owned = {
        "ownerReferences": [
            {
                "apiVersion": "whatsapp.released.io/v1alpha1",
                "kind": "WhatsAppAgent",
                "name": "acme",
                "uid": agent["metadata"]["uid"],
                "controller": True,
            }
        ]
    }
    world.kube.put({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "acme-beat", "namespace": NS, **owned}})
    world.kube.put({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "acme-beat", "namespace": NS}})  # someone else's
    await reconcile(world.agent(), retry=0)
    assert world.kube.obj("Deployment", NS, "acme-beat") is None
    assert world.kube.obj("NetworkPolicy", NS, "acme-beat") is not None
    assert world.kube.obj("CronJob", NS, "acme-purge") is not None


async def test_permanent_knowledge_error_is_retried_after_a_minute(world: World) -> None:
    world.outside.knowledge_error = PermanentError("bad key", reason="OpenAIAuthFailed")
    world.kube.put(agent_body())
    with pytest.raises(TemporaryError) as raised:
        await reconcile(world.agent(), retry=0)
    assert raised.value.delay == 60.0
    assert world.condition("KnowledgeReady")["reason"] == "OpenAIAuthFailed"


async def test_webhook_is_registered_once_the_web_tier_is_up(world: World) -> None:
    ingress = {"host": "acme.bots.example.com", "webhook": {"register": True}}
    world.kube.put(agent_body(ingress=ingress))
    await reconcile(world.agent(), retry=0)
    assert world.condition("WebhookRegistered")["reason"] == "WaitingForWorkloads"
    assert world.outside.named("register_callback") == []

    world.roll_out()
    agent = world.agent()
    await reconcile(agent, retry=0)
    ((graph, number, token, url, verify),) = world.outside.named("register_callback")
    credentials = unb64(world.kube.obj("Secret", NS, "acme-credentials")["data"])
    assert (graph, number, url) == (
        world.settings.graph_url,
        "1234567890",
        "https://acme.bots.example.com/webhook",
    )
    assert token.startswith("EAA") and verify == credentials[keys.VERIFY_TOKEN]
    assert world.status()["webhookUrl"] == "https://acme.bots.example.com/webhook"
    assert "WebhookRegistered" in agent.events.reasons()
    assert world.condition("Ready")["status"] == "True"

    # Asked no more: the override is removed.
    body = world.kube.obj("WhatsAppAgent", NS, "acme")
    body["spec"]["ingress"]["webhook"]["register"] = False
    world.kube.put(body)
    agent = world.agent()
    await reconcile(agent, retry=0)
    assert len(world.outside.named("unregister_callback")) == 1
    assert "webhookUrl" not in world.status()
    assert "WebhookUnregistered" in agent.events.reasons()


async def test_meta_refusing_the_webhook_is_reported(world: World) -> None:
    ingress = {"host": "acme.bots.example.com", "webhook": {"register": True}}
    world.kube.put(agent_body(ingress=ingress))
    await reconcile(world.agent(), retry=0)
    world.roll_out()
    world.outside.meta_error = PermanentError("token rejected", reason="MetaTokenRejected")
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    cond = world.condition("WebhookRegistered")
    assert (cond["status"], cond["reason"]) == ("False", "MetaTokenRejected")
    assert world.condition("Ready")["reason"] == "MetaTokenRejected"


async def test_removing_the_ingress_prunes_it(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    assert world.kube.obj("Ingress", NS, "acme") is not None
    body = world.kube.obj("WhatsAppAgent", NS, "acme")
    del body["spec"]["ingress"]
    world.kube.put(body)
    agent = world.agent()
    await reconcile(agent, retry=0)
    assert world.kube.obj("Ingress", NS, "acme") is None
    assert ("Normal", "Pruned", "deleted children no longer wanted: Ingress/acme") in (
        agent.events.events
    )


async def test_service_monitor_only_where_its_kind_is_served(world: World) -> None:
    world.kube.not_served = set()  # 1.21+ with the Prometheus operator
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    assert world.kube.obj("ServiceMonitor", NS, "acme-web") is not None
    assert world.kube.obj("PodDisruptionBudget", NS, "acme-web")["apiVersion"] == "policy/v1"


async def test_a_changed_user_secret_changes_the_pods_checksum(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    before = world.status()["configChecksum"]
    world.kube.put(
        {**world.kube.obj("Secret", NS, "openai"), "data": {"apiKey": b64("sk-new-1234")}}
    )
    await reconcile(world.agent(), retry=0)
    after = world.status()["configChecksum"]
    assert after != before
    web = world.kube.obj("Deployment", NS, "acme-web")
    assert after in str(web["spec"]["template"]["metadata"])


async def test_provisioned_database(pg_world: World) -> None:
    pg_world.kube.put(agent_body(database=None))
    await reconcile(pg_world.agent(), retry=0)
    credentials = unb64(pg_world.kube.obj("Secret", NS, "acme-credentials")["data"])
    assert credentials[keys.DATABASE_ROLE] == ROLE_A
    assert credentials[keys.DATABASE_URL].startswith(f"postgresql://{ROLE_A}:pw-a@")
    assert pg_world.status()["database"] == {
        "name": DB_NAME,
        "role": ROLE_A,
    }
    # The next pass re-asserts the role it finds in the Secret.
    await reconcile(pg_world.agent(), retry=0)
    (_key, current) = pg_world.outside.named("ensure_database")[-1]
    assert current.role == ROLE_A


async def test_database_conflict_blocks_and_waits_long(pg_world: World) -> None:
    pg_world.outside.database_error = PermanentError(
        "the database belongs to something else", reason="DatabaseNameConflict"
    )
    pg_world.kube.put(agent_body(database=None))
    with pytest.raises(TemporaryError) as raised:
        await reconcile(pg_world.agent(), retry=0)
    assert raised.value.delay == MAX_BACKOFF
    assert pg_world.condition("Ready")["reason"] == "DatabaseNameConflict"
    assert pg_world.kube.obj("Deployment", NS, "acme-web") is None


async def test_database_unavailable_blocks_and_retries(pg_world: World) -> None:
    pg_world.outside.database_error = TemporaryError(
        "cannot reach the shared PostgreSQL server", reason="DatabaseUnavailable", delay=15.0
    )
    pg_world.kube.put(agent_body(database=None))
    with pytest.raises(TemporaryError) as raised:
        await reconcile(pg_world.agent(), retry=3)
    assert raised.value.delay == 40.0  # the backoff beats the 15 s the error suggests
    assert pg_world.condition("Ready")["reason"] == "DatabaseUnavailable"


async def test_status_write_retries_on_conflict(world: World) -> None:
    world.kube.put(agent_body())
    conflicts = [1]

    def one_conflict(verb: str, key: tuple[str, str, str]) -> None:
        if verb == "status" and conflicts:
            conflicts.pop()
            world.kube.put(world.kube.obj(*key))  # someone else wrote

    world.kube.before_write = one_conflict
    await reconcile(world.agent(), retry=0)
    assert world.status()["observedGeneration"] == 1


async def test_status_write_gives_up_when_it_keeps_changing(world: World) -> None:
    world.kube.put(agent_body())

    def always(verb: str, key: tuple[str, str, str]) -> None:
        if verb == "status":
            world.kube.put(world.kube.obj(*key))

    world.kube.before_write = always
    with pytest.raises(TemporaryError, match="status kept changing"):
        await reconcile(world.agent(), retry=0)


async def _settled(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    world.roll_out()
    await reconcile(world.agent(), retry=0)
    assert world.condition("Ready")["status"] == "True"
    world.outside.calls.clear()


def _asked_outside(world: World) -> list[str]:
    # ensure_knowledge is called each pass but calls OpenAI only when the FAQs' hash changed.
    return [name for name, _ in world.outside.calls if name != "ensure_knowledge"]


async def test_a_restarted_operator_asks_nothing_outside_for_a_settled_agent(
    world: World,
) -> None:
    """1,000 agents resumed at once would otherwise call OpenAI and Meta 4,000 times: a settled
    agent's resume pass applies what changed in the cluster and leaves the outside world to its
    periodic check, due at a random point of the next interval."""
    await _settled(world)
    writes = len(world.kube.writes)
    agent = world.agent()
    await reconcile(agent, retry=0, resume=True)
    assert _asked_outside(world) == []
    assert len(world.kube.writes) == writes  # nothing was written either
    assert world.condition("Ready")["status"] == "True"
    interval, now = world.settings.check_interval, time.monotonic()
    assert checks.due(agent.uid, interval, now=now + interval + 1)  # within one interval
    # A pass that is not a resume (a spec change, a referenced Secret) looks outside as ever.
    await reconcile(world.agent(), retry=0)
    assert "model_exists" in _asked_outside(world)


async def test_a_restarted_operator_reconciles_in_full_what_changed_meanwhile(
    world: World,
) -> None:
    await _settled(world)
    await world.kube.merge_patch(
        "whatsapp.released.io/v1alpha1", "WhatsAppAgent", NS, "acme",
        {"spec": {"model": "gpt-4.1-mini"}},
    )  # fmt: skip
    await reconcile(world.agent(), retry=0, resume=True)
    assert "model_exists" in _asked_outside(world)
    assert world.status()["observedGeneration"] == 2


def test_resumed_agents_are_checked_at_different_times() -> None:
    interval, now = 600.0, 1_000_000.0
    for n in range(200):
        checks.spread_check(f"uid-{n}", interval, now=now)
    due_at = sorted(
        next(t for t in range(0, 601, 5) if checks.due(f"uid-{n}", interval, now=now + t))
        for n in range(200)
    )
    assert due_at[0] < 60 and due_at[-1] > 540  # spread over the whole interval
    assert len(set(due_at)) > 50


def _stall_body(register: bool, workloads: str, webhook_reason: str) -> dict[str, object]:
    return {
        "spec": {"ingress": {"webhook": {"register": register}}},
        "status": {
            "conditions": [
                {"type": "WorkloadsReady", "status": workloads, "reason": "x"},
                {"type": "WebhookRegistered", "status": "False", "reason": webhook_reason},
            ]
        },
    }


@pytest.mark.parametrize(
    ("register", "workloads_status", "reason", "stalled"),
    [
        (True, "True", "WaitingForWorkloads", True),  # the pass that registers was missed
        (True, "False", "WaitingForWorkloads", False),  # still rolling: the edge will come
        (True, "True", "MetaRefused", False),  # another problem: a pass would not help
        (False, "True", "WaitingForWorkloads", False),  # no registration asked for
    ],
)
def test_the_timer_asks_for_a_pass_only_when_the_webhook_waits_on_ready_workloads(
    register: bool, workloads_status: str, reason: str, stalled: bool
) -> None:
    body = _stall_body(register, workloads_status, reason)
    assert workloads.webhook_stalled(body) is stalled
