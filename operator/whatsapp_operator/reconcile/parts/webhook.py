"""Part ``webhook`` (condition ``WebhookRegistered``): Meta's callback URL override.

With ``spec.ingress.webhook.register`` and a host, the phone number's override is set to
``https://<host>/webhook`` once the web tier is ready (Meta verifies the URL at once, with the
current verify token); without them an override the operator set earlier is removed.
"""

from __future__ import annotations

from released.agent.spec import AgentSpec

from ... import credentials as keys
from ... import status as st
from ...errors import ReleasedError
from ...meta_webhook import register_callback, unregister_callback
from .base import Pass


def webhook_url(spec: AgentSpec) -> str | None:
    """``https://<ingress host>/webhook``, or ``None`` without a host."""
    host = spec.ingress_host
    return f"https://{host}/webhook" if host else None


def webhook_requested(spec: AgentSpec) -> bool:
    """Whether the spec asks the operator to register the callback with Meta."""
    return bool(
        spec.ingress is not None and spec.ingress.webhook.register_override and spec.ingress_host
    )


async def ensure(p: Pass) -> None:
    agent, spec = p.agent, p.inputs.spec
    graph_url = agent.settings.graph_url
    url = webhook_url(spec)
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
        p.outcome.fail(st.WEBHOOK_REGISTERED, exc)
        return
    if agent.status.get("webhookUrl") != url:
        agent.events.info("WebhookRegistered", f"Meta now calls {url}")
    p.outcome.fields["webhookUrl"] = url
    p.outcome.set(st.Condition.true(st.WEBHOOK_REGISTERED, "Registered", f"Meta calls {url}"))
