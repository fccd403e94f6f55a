"""Part ``meta_account`` (condition ``MetaAccountHealthy``): does Meta accept the agent's token?

Reads the phone number with the agent's own token (``GET /{PHONE_NUMBER_ID}?fields=...``), on
every pass (a new token in the Secret re-reconciles the agent, so the condition turns ``True``
as soon as it works) and by the periodic check. Meta's refusal is reported with a reason and
what to do (:func:`account_condition`); ``Ready`` is ``False`` meanwhile. When Meta does not
answer, the condition keeps what the last check found.

===================== ============================================ ==========================
reason                Meta's answer                                what to do
===================== ============================================ ==========================
``Healthy``           the number, its name and quality rating      nothing
``LowQuality``        quality rating ``RED`` (still ``True``)      read the number's quality
``TokenExpired``      190, subcode 463                             a new token in the Secret
``TokenRejected``     190 (other subcodes), 102, HTTP 401          a new token in the Secret
``PermissionDenied``  10, 200-299, HTTP 403                        grant the permissions
``PolicyBlocked``     368 (lasts hours)                            Account quality in WhatsApp
                                                                   Manager; wait
``AccountRestricted`` 131031, 131042, ...                          WhatsApp Manager
``PhoneNumberNotFound`` 100 (the number is not visible to the      spec.phoneNumberId and the
                      token)                                       token's WABA
===================== ============================================ ==========================
"""

from __future__ import annotations

from ... import graph
from ... import status as st
from ...errors import ReleasedError, TemporaryError
from ...meta_account import PhoneNumber, read_phone_number
from .base import Pass

#: Meta's subcode of an expired token (190).
EXPIRED_TOKEN_SUBCODE = 463
#: Reasons of ``MetaAccountHealthy=False`` (no send can succeed until a person acts).
UNHEALTHY_REASONS = frozenset(
    {
        "TokenExpired",
        "TokenRejected",
        "PermissionDenied",
        "PolicyBlocked",
        "AccountRestricted",
        "PhoneNumberNotFound",
    }
)


def healthy_condition(phone: PhoneNumber) -> st.Condition:
    """``MetaAccountHealthy=True``: what Meta says of the number."""
    if (phone.quality_rating or "").upper() == "RED":
        return st.Condition.true(
            st.META_ACCOUNT_HEALTHY,
            "LowQuality",
            f"Meta accepts the token for {phone.describe()}: recipients rate the messages "
            "poorly and Meta may lower the number's messaging limit; read the number's "
            "quality in WhatsApp Manager",
        )
    return st.Condition.true(
        st.META_ACCOUNT_HEALTHY, "Healthy", f"Meta accepts the token for {phone.describe()}"
    )


def account_condition(exc: ReleasedError, phone_number_id: str) -> st.Condition | None:
    """``MetaAccountHealthy=False`` for Meta's refusal ``exc``; ``None`` when ``exc`` says
    nothing about the account (Meta did not answer, or asked to wait)."""
    codes = f"code {exc.code}" if exc.code is not None else "no code"
    if exc.subcode is not None:
        codes += f", subcode {exc.subcode}"
    kind = exc.kind

    def false(reason: str, message: str) -> st.Condition:
        return st.Condition.false(st.META_ACCOUNT_HEALTHY, reason, message)

    if kind == "token":
        expired = exc.subcode == EXPIRED_TOKEN_SUBCODE
        return false(
            "TokenExpired" if expired else "TokenRejected",
            f"Meta refuses the access token ({'expired' if expired else 'invalid or revoked'}; "
            f"{codes}): no message can be sent; {graph.TOKEN_ACTION}",
        )
    if kind == "permission":
        return false(
            "PermissionDenied",
            f"the access token may not use phone number {phone_number_id} ({codes}): "
            f"{graph.PERMISSION_ACTION}",
        )
    if kind == "policy":
        return false(
            "PolicyBlocked",
            f"Meta blocked the account for a policy violation ({codes}); it usually lasts "
            "hours: see Account quality in WhatsApp Manager. The operator checks again",
        )
    if kind == "account":
        return false(
            "AccountRestricted",
            f"Meta restricts the account or the number ({codes}): see the account's status "
            "and payment method in WhatsApp Manager",
        )
    if isinstance(exc, TemporaryError):
        return None
    if exc.code == 100:
        return false(
            "PhoneNumberNotFound",
            f"Meta shows this token no phone number {phone_number_id} ({codes}): check "
            "spec.phoneNumberId and that the number belongs to the token's WhatsApp Business "
            "Account",
        )
    return false(exc.reason or "MetaRequestInvalid", exc.message)


def unhealthy(p: Pass) -> bool:
    """Whether this pass found Meta refusing the agent's account (no Graph call can work)."""
    cond = p.current(st.META_ACCOUNT_HEALTHY)
    return cond is not None and cond.status == "False" and cond.reason in UNHEALTHY_REASONS


async def ensure(p: Pass) -> None:
    agent, spec = p.agent, p.inputs.spec
    try:
        phone = await read_phone_number(
            agent.settings.graph_url, spec.phone_number_id, p.inputs.meta_access_token
        )
    except ReleasedError as exc:
        cond = account_condition(exc, spec.phone_number_id)
        if cond is None:
            p.check_failed(st.META_ACCOUNT_HEALTHY, exc)
            return
        if p.changed(cond):
            agent.events.warn(cond.reason, cond.message)
        # No retry: nothing changes until a person acts; a new token in the Secret
        # re-reconciles the agent, and the periodic check looks again.
        p.outcome.set(cond)
        return
    cond = healthy_condition(phone)
    was = p.current(st.META_ACCOUNT_HEALTHY)
    if was is not None and was.status == "False" and was.reason in UNHEALTHY_REASONS:
        agent.events.info("MetaAccountHealthy", cond.message)
    elif cond.reason == "LowQuality" and p.changed(cond):
        agent.events.warn(cond.reason, cond.message)
    p.outcome.set(cond)
