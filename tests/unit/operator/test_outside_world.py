"""The parts that look at the outside world, without a cluster: ``ModelAvailable``,
``MetaAccountHealthy``, ``WabaSubscribed`` (and ``WebhookRegistered`` while the app is not
subscribed), and the periodic check between passes (``reconcile.checks``).

What a person sees: the conditions (``kubectl get waa`` / ``describe``), ``Ready``, the Events,
which outside calls were made, and whether a pass was asked for.
"""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from whatsapp_operator import status as st
from whatsapp_operator.errors import PermanentError, TemporaryError
from whatsapp_operator.knowledge import KnowledgeCheck
from whatsapp_operator.meta_account import SubscribedApp
from whatsapp_operator.models import model_condition
from whatsapp_operator.reconcile import checks
from whatsapp_operator.reconcile.parts import model as model_part
from whatsapp_operator.reconcile.pipeline import reconcile

from .conftest import NS, World, agent_body, make_world
from .fake_kube import RecordedEvents

WABA = "102290129340398"
REGISTER = {"host": "acme.bots.example.com", "webhook": {"register": True}}


@pytest.fixture
def before_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_part, "today", lambda: dt.date(2026, 12, 2))


async def ready_agent(world: World, **spec: object) -> None:
    """Store the agent, reconcile, roll it out, reconcile again."""
    world.kube.put(agent_body(**spec))
    with contextlib.suppress(TemporaryError):
        await reconcile(world.agent(), retry=0)
    world.roll_out()
    with contextlib.suppress(TemporaryError):
        await reconcile(world.agent(), retry=0)


def reconcile_requested(world: World) -> bool:
    body = world.kube.obj("WhatsAppAgent", NS, "acme") or {}
    annotations = body["metadata"].get("annotations") or {}
    return any(key.endswith("/reconcile-requested") for key in annotations)


def warnings(events: st.Events) -> list[tuple[str, str]]:
    assert isinstance(events, RecordedEvents)
    return [(r, m) for t, r, m in events.events if t == "Warning"]


# -- ModelAvailable ----------------------------------------------------------------------------


def test_model_condition_says_when_and_what_to_set() -> None:
    before = model_condition("gpt-4.1-mini", True, dt.date(2026, 12, 2))
    assert (before.status, before.reason) == ("True", "ShutdownAnnounced")
    assert before.message == (
        "gpt-4.1-mini shuts down on 2027-01-14; set spec.assistant.model to gpt-6-luna"
    )
    # A dated snapshot of a family shuts down with it.
    snapshot = model_condition("gpt-4.1-mini-2025-04-14", True, dt.date(2026, 12, 2))
    assert snapshot.reason == "ShutdownAnnounced" and "2027-01-14" in snapshot.message
    gone = model_condition("gpt-4.1-mini", False, dt.date(2027, 1, 15))
    assert (gone.status, gone.reason) == ("False", "ModelShutDown")
    assert "2027-01-14" in gone.message and "gpt-6-luna" in gone.message
    unknown = model_condition("gpt-typo", False, dt.date(2026, 12, 2))
    assert (unknown.status, unknown.reason) == ("False", "ModelNotFound")
    assert "'gpt-typo'" in unknown.message
    fine = model_condition("gpt-6-luna", True, dt.date(2026, 12, 2))
    assert (fine.status, fine.reason) == ("True", "Available")


async def test_the_default_model_is_available_and_the_agent_ready(world: World) -> None:
    await ready_agent(world)
    assert world.outside.named("model_exists") == ["gpt-6-luna", "gpt-6-luna"]
    assert world.condition("ModelAvailable")["reason"] == "Available"
    assert world.condition("Ready")["status"] == "True"


async def test_a_model_with_an_announced_shutdown_warns_but_serves(
    world: World, before_shutdown: None
) -> None:
    await ready_agent(world, assistant={"model": "gpt-4.1-mini"})
    cond = world.condition("ModelAvailable")
    assert (cond["status"], cond["reason"]) == ("True", "ShutdownAnnounced")
    assert "set spec.assistant.model to gpt-6-luna" in cond["message"]
    assert world.condition("Ready")["status"] == "True"
    agent = world.agent()
    await reconcile(agent, retry=0)  # every pass (a spec change) repeats the warning
    assert warnings(agent.events) == [
        (
            "ModelShutdownAnnounced",
            "gpt-4.1-mini shuts down on 2027-01-14; set spec.assistant.model to gpt-6-luna",
        )
    ]


async def test_a_shut_down_model_makes_the_agent_not_ready(world: World) -> None:
    world.outside.models.discard("gpt-4.1-mini")
    await ready_agent(world, assistant={"model": "gpt-4.1-mini"})
    cond = world.condition("ModelAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "ModelShutDown")
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ModelShutDown")
    assert "spec.assistant.model to gpt-6-luna" in ready["message"]


async def test_openai_not_answering_keeps_what_the_last_check_found(world: World) -> None:
    await ready_agent(world)
    world.outside.model_error = TemporaryError("no answer", reason="OpenAIUnavailable")
    with pytest.raises(TemporaryError):  # the pass is retried
        await reconcile(world.agent(), retry=0)
    assert world.condition("ModelAvailable")["reason"] == "Available"
    assert world.condition("Ready")["status"] == "True"


async def test_a_refused_key_is_reported_on_the_model_too(world: World) -> None:
    world.outside.model_error = PermanentError("bad key", reason="OpenAIAuthFailed")
    world.kube.put(agent_body())
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    cond = world.condition("ModelAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "OpenAIAuthFailed")


# -- MetaAccountHealthy ------------------------------------------------------------------------


def token_error(subcode: int) -> PermanentError:
    return PermanentError(
        "Meta rejected the access token", reason="MetaTokenRejected", kind="token", code=190,
        subcode=subcode,
    )


async def test_an_expired_token_is_reported_with_what_to_do(world: World) -> None:
    await ready_agent(world, ingress=REGISTER)
    assert world.condition("MetaAccountHealthy")["reason"] == "Healthy"
    registered = len(world.outside.named("register_callback"))

    world.outside.account_error = token_error(463)
    agent = world.agent()
    await reconcile(agent, retry=0)  # no retry loop: nothing changes until a person acts
    cond = world.condition("MetaAccountHealthy")
    assert (cond["status"], cond["reason"]) == ("False", "TokenExpired")
    assert "code 190, subcode 463" in cond["message"]
    assert "accessToken of the Secret named by spec.secrets.meta" in cond["message"]
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TokenExpired")
    assert [r for r, _ in warnings(agent.events)] == ["TokenExpired"]
    # No Graph call that would be refused the same way; the webhook keeps what it said.
    assert len(world.outside.named("register_callback")) == registered
    assert world.condition("WebhookRegistered")["status"] == "True"

    # A new token (the Secret's change re-reconciles the agent): healthy again.
    world.outside.account_error = None
    agent = world.agent()
    await reconcile(agent, retry=0)
    assert world.condition("MetaAccountHealthy")["status"] == "True"
    assert world.condition("Ready")["status"] == "True"
    assert "MetaAccountHealthy" in agent.events.reasons()


@pytest.mark.parametrize(
    ("error", "reason", "words"),
    [
        (token_error(460), "TokenRejected", "invalid or revoked"),
        (
            PermanentError("x", reason="MetaPermissionDenied", kind="permission", code=200),
            "PermissionDenied",
            "whatsapp_business_management",
        ),
        (
            TemporaryError("x", reason="MetaPolicyBlocked", kind="policy", code=368),
            "PolicyBlocked",
            "Account quality",
        ),
        (
            PermanentError("x", reason="MetaAccountRestricted", kind="account", code=131031),
            "AccountRestricted",
            "WhatsApp Manager",
        ),
        (
            PermanentError("x", reason="MetaRequestInvalid", kind="invalid", code=100, subcode=33),
            "PhoneNumberNotFound",
            "spec.phoneNumberId",
        ),
    ],
)
async def test_account_problems_each_have_a_reason_and_an_action(
    world: World, error: Exception, reason: str, words: str
) -> None:
    world.outside.account_error = error  # type: ignore[assignment]
    await ready_agent(world)
    cond = world.condition("MetaAccountHealthy")
    assert (cond["status"], cond["reason"]) == ("False", reason)
    assert words in cond["message"]
    assert world.condition("Ready")["reason"] == reason


async def test_meta_not_answering_keeps_the_account_condition(world: World) -> None:
    await ready_agent(world)
    world.outside.account_error = TemporaryError(
        "no answer", reason="MetaUnavailable", kind="temporary", transient=True
    )
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    assert world.condition("MetaAccountHealthy")["reason"] == "Healthy"


async def test_a_red_quality_rating_warns_and_stays_healthy(world: World) -> None:
    from whatsapp_operator.meta_account import PhoneNumber

    world.outside.phone = PhoneNumber(id="1234567890", quality_rating="RED")
    await ready_agent(world)
    cond = world.condition("MetaAccountHealthy")
    assert (cond["status"], cond["reason"]) == ("True", "LowQuality")
    assert world.condition("Ready")["status"] == "True"


# -- WabaSubscribed ----------------------------------------------------------------------------


async def test_without_a_waba_id_the_subscription_is_unknown_and_ready_holds(
    world: World,
) -> None:
    await ready_agent(world)
    cond = world.condition("WabaSubscribed")
    assert (cond["status"], cond["reason"]) == ("Unknown", "BusinessAccountIdNotSet")
    assert "spec.businessAccountId" in cond["message"]
    assert world.condition("Ready")["status"] == "True"
    assert world.outside.named("subscribed_apps") == []


async def test_the_operator_subscribes_an_unsubscribed_app_once(world: World) -> None:
    await ready_agent(world, businessAccountId=WABA, ingress=REGISTER)
    assert world.outside.named("subscribe_app") == [WABA]  # once, then it is listed
    assert world.outside.named("subscribed_apps") == [WABA, WABA]
    cond = world.condition("WabaSubscribed")
    assert (cond["status"], cond["reason"]) == ("True", "Subscribed")
    assert world.condition("WebhookRegistered")["reason"] == "Registered"
    assert world.condition("Ready")["status"] == "True"


async def test_a_subscribed_app_is_never_posted_again(world: World) -> None:
    # A body-less POST would remove the app's WABA-level override.
    world.outside.wabas[WABA] = [
        SubscribedApp(app_id="1", override_callback_uri="https://other.example.com/hook")
    ]
    await ready_agent(world, businessAccountId=WABA)
    assert world.outside.named("subscribe_app") == []
    assert world.condition("WabaSubscribed")["status"] == "True"


async def test_with_the_platform_app_id_another_app_does_not_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world(monkeypatch, meta_app_id="777")
    world.outside.app_id = "777"
    world.outside.wabas[WABA] = [SubscribedApp(app_id="555", name="a BSP's app")]
    await ready_agent(world, businessAccountId=WABA)
    assert world.outside.named("subscribe_app") == [WABA]


async def test_an_app_that_cannot_be_subscribed_blocks_the_webhook(world: World) -> None:
    world.outside.subscribe_error = PermanentError(
        "Meta refused to subscribe the app (HTTP 403, code 200)",
        reason="MetaPermissionDenied",
        kind="permission",
        code=200,
    )
    await ready_agent(world, businessAccountId=WABA, ingress=REGISTER)
    waba = world.condition("WabaSubscribed")
    assert (waba["status"], waba["reason"]) == ("False", "NotSubscribed")
    assert f"POST /{WABA}/subscribed_apps" in waba["message"]
    webhook = world.condition("WebhookRegistered")
    assert (webhook["status"], webhook["reason"]) == ("False", "WabaNotSubscribed")
    assert world.outside.named("register_callback") == []  # Meta would refuse it
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NotSubscribed")


async def test_not_requested_webhook_is_not_true_while_unsubscribed(world: World) -> None:
    world.outside.subscribe_error = PermanentError("no", reason="MetaPermissionDenied")
    await ready_agent(world, businessAccountId=WABA)
    webhook = world.condition("WebhookRegistered")
    assert (webhook["status"], webhook["reason"]) == ("False", "WabaNotSubscribed")


async def test_a_subscription_that_cannot_be_read_says_what_to_check(world: World) -> None:
    world.outside.waba_error = PermanentError(
        "Meta refused to read (HTTP 400, code 100)", reason="MetaRequestInvalid", code=100
    )
    await ready_agent(world, businessAccountId=WABA)
    cond = world.condition("WabaSubscribed")
    assert (cond["status"], cond["reason"]) == ("False", "MetaRequestInvalid")
    assert "check spec.businessAccountId" in cond["message"]
    assert world.outside.named("subscribe_app") == []


async def test_meta_not_answering_about_the_subscription(world: World) -> None:
    world.outside.waba_error = TemporaryError("no answer", reason="MetaUnavailable")
    world.kube.put(agent_body(businessAccountId=WABA))
    with pytest.raises(TemporaryError):  # retried
        await reconcile(world.agent(), retry=0)
    assert world.condition("WabaSubscribed")["status"] == "Unknown"  # never checked yet
    world.outside.waba_error = None
    with contextlib.suppress(TemporaryError):
        await reconcile(world.agent(), retry=0)
    assert world.condition("WabaSubscribed")["status"] == "True"
    world.outside.subscribe_error = TemporaryError("rate", reason="MetaRateLimited")
    world.outside.wabas[WABA] = []
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    cond = world.condition("WabaSubscribed")
    assert (cond["status"], cond["reason"]) == ("False", "NotSubscribed")
    assert "retried" in cond["message"]


async def test_a_refused_token_skips_the_subscription_check(world: World) -> None:
    world.outside.account_error = token_error(463)
    await ready_agent(world, businessAccountId=WABA, ingress=REGISTER)
    assert world.outside.named("subscribed_apps") == []
    assert world.condition("WabaSubscribed")["reason"] == "WaitingForMetaAccount"
    assert world.condition("WebhookRegistered")["reason"] == "WaitingForMetaAccount"
    assert world.outside.named("register_callback") == []
    assert world.condition("Ready")["reason"] == "TokenExpired"


# -- the periodic check ------------------------------------------------------------------------


async def test_due_counts_from_the_last_check() -> None:
    checks.forget("u")
    assert not checks.due("u", 600, now=1000.0)  # new: its first pass checks the same
    assert checks.due("u", 600, now=1600.0)
    checks.mark_checked("u", now=2000.0)
    assert not checks.due("u", 600, now=2599.0)
    assert checks.due("u", 600, now=2600.0)
    checks.forget("u")


async def test_an_agent_whose_pass_is_pending_is_not_checked(world: World) -> None:
    await ready_agent(world)
    body = world.kube.obj("WhatsAppAgent", NS, "acme")
    assert body is not None
    body["metadata"]["generation"] = 2  # the spec changed: a pass is on its way
    world.kube.put(body)
    calls = len(world.outside.calls)
    assert await checks.check_outside(world.agent()) is None
    assert len(world.outside.calls) == calls


async def test_a_check_reads_no_child(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check applies nothing: it neither reads the children (the ownership check of a
    pass) nor asks whether ServiceMonitors are served."""
    await ready_agent(world)
    asked: list[str] = []

    async def servicemonitor_crd_exists(namespace: str) -> bool:
        asked.append(namespace)
        return False

    monkeypatch.setattr(world.kube, "servicemonitor_crd_exists", servicemonitor_crd_exists)
    referenced = {("Secret", "meta"), ("Secret", "openai"), ("Secret", "db")}
    before = {k: n for k, n in world.kube.reads.items() if k not in referenced}
    assert await checks.check_outside(world.agent()) is not None
    assert {k: n for k, n in world.kube.reads.items() if k not in referenced} == before
    assert asked == []


async def test_a_pass_counts_as_a_check(world: World) -> None:
    world.kube.put(agent_body())
    agent = world.agent()
    checks.forget(agent.uid)
    await reconcile(agent, retry=0)
    assert not checks.due(agent.uid, 600)


async def test_a_deleted_vector_store_is_rebuilt_and_knowledge_false_meanwhile(
    world: World,
) -> None:
    await ready_agent(world)
    world.outside.knowledge_check = KnowledgeCheck.STORE_MISSING
    agent = world.agent()
    await checks.check_outside(agent)
    cond = world.condition("KnowledgeReady")
    assert (cond["status"], cond["reason"]) == ("False", "VectorStoreMissing")
    assert "vs_1" in cond["message"]
    assert "knowledge" not in world.status()
    assert world.condition("Ready")["reason"] == "VectorStoreMissing"
    assert "VectorStoreMissing" in agent.events.reasons()
    assert reconcile_requested(world)

    # The pass that was asked for makes a new store (nothing recorded: looked up or created).
    calls = len(world.outside.named("ensure_knowledge"))
    await reconcile(world.agent(), retry=0)
    (_params, _key, _faqs, current) = world.outside.named("ensure_knowledge")[calls]
    assert current is None
    assert world.condition("KnowledgeReady")["status"] == "True"
    assert world.status()["knowledge"]["vectorStoreId"] == "vs_1"


async def test_a_lost_faq_file_is_uploaded_again(world: World) -> None:
    await ready_agent(world)
    world.outside.knowledge_check = KnowledgeCheck.FILE_MISSING
    await checks.check_outside(world.agent())
    assert world.condition("KnowledgeReady")["reason"] == "FaqFileMissing"
    assert world.status()["knowledge"] == {"vectorStoreId": "vs_1", "fileId": "", "faqHash": "h2"}
    assert reconcile_requested(world)
    calls = len(world.outside.named("ensure_knowledge"))
    await reconcile(world.agent(), retry=0)
    (_params, _key, _faqs, current) = world.outside.named("ensure_knowledge")[calls]
    assert current.vector_store_id == "vs_1" and not current.file_id  # same store, new file
    assert world.condition("KnowledgeReady")["status"] == "True"


async def test_openai_not_answering_the_store_check_changes_nothing(world: World) -> None:
    await ready_agent(world)
    world.outside.knowledge_error = TemporaryError("no answer", reason="OpenAIUnavailable")
    await checks.check_outside(world.agent())
    assert world.condition("KnowledgeReady")["status"] == "True"
    assert not reconcile_requested(world)
    world.outside.knowledge_error = PermanentError("bad key", reason="OpenAIAuthFailed")
    await checks.check_outside(world.agent())
    assert world.condition("KnowledgeReady")["reason"] == "OpenAIAuthFailed"


async def test_an_intact_agent_is_checked_without_a_status_write(world: World) -> None:
    await ready_agent(world, businessAccountId=WABA)
    before, calls = len(world.kube.written("WhatsAppAgent")), len(world.outside.calls)
    await checks.check_outside(world.agent())
    assert len(world.kube.written("WhatsAppAgent")) == before
    assert [name for name, _ in world.outside.calls[calls:]] == [
        "check_knowledge",
        "model_exists",
        "read_phone_number",
        "subscribed_apps",
    ]
    assert not reconcile_requested(world)


async def test_the_check_notices_a_shutdown_between_passes(world: World) -> None:
    await ready_agent(world, assistant={"model": "gpt-4.1-mini"})
    world.outside.models.discard("gpt-4.1-mini")
    agent = world.agent()
    await checks.check_outside(agent)
    cond = world.condition("ModelAvailable")
    assert (cond["status"], cond["reason"]) == ("False", "ModelShutDown")
    assert world.condition("Ready")["reason"] == "ModelShutDown"
    assert "ModelShutDown" in agent.events.reasons()


async def test_the_check_notices_an_unsubscribed_app_and_resubscribes_it(world: World) -> None:
    await ready_agent(world, businessAccountId=WABA, ingress=REGISTER)
    # Someone removes the app's subscription, and the token may not subscribe it again now.
    world.outside.wabas[WABA] = []
    world.outside.subscribe_error = PermanentError("no", reason="MetaPermissionDenied")
    await checks.check_outside(world.agent())
    assert world.condition("WabaSubscribed")["status"] == "False"
    webhook = world.condition("WebhookRegistered")
    assert (webhook["status"], webhook["reason"]) == ("False", "WabaNotSubscribed")
    assert not reconcile_requested(world)

    # The permission is granted: the next check subscribes it, and asks for a pass to
    # register the callback again.
    world.outside.subscribe_error = None
    await checks.check_outside(world.agent())
    assert world.condition("WabaSubscribed")["status"] == "True"
    assert reconcile_requested(world)
    await reconcile(world.agent(), retry=0)
    assert world.condition("WebhookRegistered")["reason"] == "Registered"
    assert world.condition("Ready")["status"] == "True"


async def test_the_check_notices_a_revoked_token_and_its_return(world: World) -> None:
    await ready_agent(world)
    world.outside.account_error = token_error(460)
    await checks.check_outside(world.agent())
    assert world.condition("MetaAccountHealthy")["reason"] == "TokenRejected"
    assert world.condition("Ready")["status"] == "False"
    world.outside.account_error = None
    await checks.check_outside(world.agent())
    assert world.condition("MetaAccountHealthy")["status"] == "True"
    assert world.condition("Ready")["status"] == "True"


async def test_a_blocked_agent_is_not_checked(world: World) -> None:
    world.kube.objects.pop(("Secret", NS, "openai"))
    world.kube.put(agent_body())
    with pytest.raises(TemporaryError):
        await reconcile(world.agent(), retry=0)
    calls = list(world.outside.calls)
    assert await checks.check_outside(world.agent()) is None
    assert world.outside.calls == calls
    assert st.ready_reason(world.status()) == "SecretNotFound"
