"""Part ``webhook`` (condition ``WebhookRegistered``): Meta's callback URL override.

With ``spec.ingress.webhook.register`` and a host, the phone number's override is set to
``https://<host>/webhook`` once the web tier is ready (Meta verifies the URL at once, with the
current verify token); without them an override the operator set earlier is removed.

Whatever the callback, Meta delivers nothing while the app is not subscribed to the WABA: with
``WabaSubscribed=False`` the condition is ``False`` (reason ``WabaNotSubscribed``) and no call
is made. While Meta refuses the agent's token (``MetaAccountHealthy=False``) no call is made
either, and the condition keeps what it said.
"""

from __future__ import annotations

from released.agent.spec import AgentSpec

from ... import credentials as keys
from ... import status as st
from ...errors import ReleasedError
from ...meta_webhook import register_callback, unregister_callback
from . import meta_account, waba
from .base import Pass

WABA_NOT_SUBSCRIBED = "WabaNotSubscribed"


def webhook_url(spec: AgentSpec) -> str | None:
    """``https://<ingress host>/webhook``, or ``None`` without a host."""
    host = spec.ingress_host
    return f"https://{host}/webhook" if host else None


def webhook_requested(spec: AgentSpec) -> bool:
    """Whether the spec asks the operator to register the callback with Meta."""
    return bool(
        spec.ingress is not None and spec.ingress.webhook.register_override and spec.ingress_host
    )


def not_subscribed(spec: AgentSpec) -> st.Condition:
    """``WebhookRegistered=False`` while the app is not subscribed to the WABA."""
    return st.Condition.false(
        st.WEBHOOK_REGISTERED,
        WABA_NOT_SUBSCRIBED,
        f"Meta delivers nothing while the app is not subscribed to WhatsApp Business Account "
        f"{spec.business_account_id}: see WabaSubscribed",
    )


def gated(p: Pass) -> bool:
    """Record the condition and return ``True`` when the webhook cannot be worked on now
    (the app is not subscribed, or Meta refuses the token)."""
    if waba.waba_subscribed(p) is False:
        p.outcome.set(not_subscribed(p.inputs.spec))
        return True
    if meta_account.unhealthy(p):
        if st.get_condition(p.agent.status, st.WEBHOOK_REGISTERED) is None:
            p.outcome.set(
                st.Condition.unknown(
                    st.WEBHOOK_REGISTERED,
                    "WaitingForMetaAccount",
                    "Meta refuses the agent's token: see MetaAccountHealthy",
                )
            )
        return True
    return False


async def ensure(p: Pass) -> None:
    agent, spec = p.agent, p.inputs.spec
    graph_url = agent.settings.graph_url
    url = webhook_url(spec)
    if gated(p):
        return
    if not webhook_requested(spec) or url is None:
        if agent.status.get("webhookUrl"):
            try:
                await unregister_callback(
                    graph_url, spec.phone_number_id, p.inputs.meta_access_token
                )
            except ReleasedError as exc:
                p.outcome.fail(st.WEBHOOK_REGISTERED, exc)
                return
            agent.events.info("WebhookUnregistered", "removed Meta's callback URL override")
        p.outcome.fields["webhookUrl"] = None
        p.outcome.set(
            st.Condition.true(
                st.WEBHOOK_REGISTERED, "NotRequested", "spec.ingress.webhook.register is false"
            )
        )
        return
    if p.workloads is None or p.workloads.status != "True":
        p.outcome.set(
            st.Condition.false(
                st.WEBHOOK_REGISTERED,
                "WaitingForWorkloads",
                "Meta verifies the callback at once: waiting for the web tier to be ready",
            )
        )
        return
    try:
        await register_callback(
            graph_url,
            spec.phone_number_id,
            p.inputs.meta_access_token,
            url,
            p.credentials.get(keys.VERIFY_TOKEN, ""),
        )
    except ReleasedError as exc:
        if exc.code == 100 and not spec.business_account_id:
            exc.message += (
                "; if the app is not subscribed to the phone number's WhatsApp Business "
                "Account, set spec.businessAccountId and the operator subscribes it"
            )
        p.outcome.fail(st.WEBHOOK_REGISTERED, exc)
        return
    if agent.status.get("webhookUrl") != url:
        agent.events.info("WebhookRegistered", f"Meta now calls {url}")
    p.outcome.fields["webhookUrl"] = url
    p.outcome.set(st.Condition.true(st.WEBHOOK_REGISTERED, "Registered", f"Meta calls {url}"))


#: ``WebhookRegistered`` reasons that a recovered account or subscription clears: the
#: periodic check then asks for a pass, which registers the callback again.
RECOVERABLE_REASONS = frozenset(
    {
        WABA_NOT_SUBSCRIBED,
        "WaitingForMetaAccount",
        "MetaTokenRejected",
        "MetaPermissionDenied",
        "MetaPolicyBlocked",
        "MetaAccountRestricted",
    }
)


async def gate(p: Pass) -> None:
    """The periodic check's part of the webhook (no call to Meta): ``False`` while the app is
    not subscribed; a pass is asked for once what kept the callback from being registered is
    gone."""
    if gated(p):
        return
    stored = st.get_condition(p.agent.status, st.WEBHOOK_REGISTERED)
    if stored is not None and stored.get("reason") in RECOVERABLE_REASONS:
        p.needs_reconcile = True
