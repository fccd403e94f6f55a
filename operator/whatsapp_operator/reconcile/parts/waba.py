"""Part ``waba`` (condition ``WabaSubscribed``): is the Meta app subscribed to the WABA?

Without the subscription no message arrives and Meta refuses the phone number's callback
override (README of the contracts, "Webhook routing and subscription"). With
``spec.businessAccountId`` the part reads ``GET /{WABA_ID}/subscribed_apps`` and, when the app
is absent, subscribes it (``POST`` without a body: an absent app has no WABA-level override
that the POST could remove; a listed app is never posted again, see
:mod:`whatsapp_operator.meta_account`). Without ``spec.businessAccountId`` the condition is
``Unknown`` (reason ``BusinessAccountIdNotSet``), which does not hold ``Ready`` back.

Skipped while ``MetaAccountHealthy`` is ``False`` (every call would be refused the same way);
when Meta does not answer, the condition keeps what the last check found.
"""

from __future__ import annotations

from ... import status as st
from ...errors import ReleasedError, TemporaryError
from ...meta_account import app_subscribed, subscribe_app, subscribed_apps
from . import meta_account
from .base import Pass

NOT_SET = "BusinessAccountIdNotSet"
#: What the subscription means for the messages (said whenever it is missing).
WHY = "without it Meta delivers no message and refuses the phone number's callback override"


def waba_subscribed(p: Pass) -> bool | None:
    """``True``/``False`` when this pass knows the app's subscription, else ``None``."""
    cond = p.current(st.WABA_SUBSCRIBED)
    if cond is None or cond.status == "Unknown":
        return None
    return cond.status == "True"


def subscribed(waba: str) -> st.Condition:
    return st.Condition.true(
        st.WABA_SUBSCRIBED,
        "Subscribed",
        f"the Meta app is subscribed to WhatsApp Business Account {waba}",
    )


async def ensure(p: Pass) -> None:
    agent, spec = p.agent, p.inputs.spec
    waba = spec.business_account_id
    if not waba:
        p.outcome.set(
            st.Condition.unknown(
                st.WABA_SUBSCRIBED,
                NOT_SET,
                "set spec.businessAccountId (the WhatsApp Business Account ID) so the operator "
                f"checks that the Meta app is subscribed to it and subscribes it: {WHY}",
            )
        )
        return
    if meta_account.unhealthy(p):
        if st.get_condition(agent.status, st.WABA_SUBSCRIBED) is None:
            p.outcome.set(
                st.Condition.unknown(
                    st.WABA_SUBSCRIBED,
                    "WaitingForMetaAccount",
                    "Meta refuses the agent's token: see MetaAccountHealthy",
                )
            )
        return
    graph_url, token = agent.settings.graph_url, p.inputs.meta_access_token
    try:
        apps = await subscribed_apps(graph_url, waba, token)
    except TemporaryError as exc:
        p.check_failed(st.WABA_SUBSCRIBED, exc)
        return
    except ReleasedError as exc:
        cond = st.Condition.false(
            st.WABA_SUBSCRIBED,
            exc.reason or "MetaRequestInvalid",
            f"cannot read the app's subscription to WhatsApp Business Account {waba} "
            f"(check spec.businessAccountId): {exc.message}",
        )
        if p.changed(cond):
            agent.events.warn("WabaNotSubscribed", cond.message)
        p.outcome.set(cond)
        return
    if app_subscribed(apps, agent.settings.meta_app_id):
        p.outcome.set(subscribed(waba))
        return
    try:
        await subscribe_app(graph_url, waba, token)
    except TemporaryError as exc:
        p.outcome.set(
            st.Condition.false(
                st.WABA_SUBSCRIBED,
                "NotSubscribed",
                f"the Meta app is not subscribed to WhatsApp Business Account {waba} ({WHY}); "
                f"subscribing it failed for now and is retried: {exc.message}",
            )
        )
        p.outcome.retry_later(exc)
        return
    except ReleasedError as exc:
        cond = st.Condition.false(
            st.WABA_SUBSCRIBED,
            "NotSubscribed",
            f"the Meta app is not subscribed to WhatsApp Business Account {waba} ({WHY}), and "
            f"the operator could not subscribe it: {exc.message}. Subscribe it (POST "
            f"/{waba}/subscribed_apps, or the App Dashboard's WhatsApp configuration) or give "
            "the token whatsapp_business_management on the account",
        )
        if p.changed(cond):
            agent.events.warn("WabaNotSubscribed", cond.message)
        p.outcome.set(cond)
        return
    agent.events.info(
        "WabaSubscribed",
        f"subscribed the Meta app to WhatsApp Business Account {waba}: messages now arrive",
    )
    p.outcome.set(subscribed(waba))
