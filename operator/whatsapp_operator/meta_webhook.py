"""Meta's callback URL override for an agent's phone number (WhatsApp Cloud API).

Meta delivers webhooks to the callback URL of the *app*; a business phone number can override
it ("Webhook overrides" in Meta's WhatsApp documentation). The operator sets the override to
``https://<ingress host>/webhook`` when ``spec.ingress.webhook.register`` is true:

- set:    ``POST /{phone-number-id}`` with
  ``{"webhook_configuration": {"override_callback_uri": URL, "verify_token": TOKEN}}``;
  Meta first performs the verification handshake (``GET URL?hub.mode=subscribe&
  hub.challenge=...&hub.verify_token=TOKEN``), so the web tier must already accept TOKEN;
  a failed handshake is error code 2200, reported here as retryable.
- remove: the same request with an empty ``override_callback_uri``;
- read:   ``GET /{phone-number-id}?fields=webhook_configuration``, whose
  ``webhook_configuration.phone_number`` is the number's override (``application`` and
  ``whatsapp_business_account`` are the fallbacks).

The calls go through :func:`whatsapp_operator.graph.request` (explicit timeout and retries;
Meta's error policy from :mod:`released.providers.meta`); their errors never contain the access
token or the verify token. Meta refuses an override while the app is not subscribed to the
number's WhatsApp Business Account (see :mod:`whatsapp_operator.meta_account`).
"""

from __future__ import annotations

import re

import httpx2 as httpx

from whatsapp_operator import graph
from whatsapp_operator.errors import PermanentError, TemporaryError
from whatsapp_operator.retrying import DEFAULT_POLICY, RetryPolicy

SERVICE = graph.SERVICE
DEFAULT_TIMEOUT = graph.DEFAULT_TIMEOUT
MAX_CALLBACK_LENGTH = 200

_DIGITS = re.compile(r"^[0-9]{1,32}$")


def _endpoint(graph_url: str, phone_number_id: str) -> str:
    if not _DIGITS.match(phone_number_id):
        raise PermanentError(
            "phoneNumberId must be the digits of Meta's phone number ID",
            reason="InvalidPhoneNumberId",
            service=SERVICE,
        )
    return f"{graph_url.rstrip('/')}/{phone_number_id}"


async def register_callback(
    graph_url: str,
    phone_number_id: str,
    access_token: str,
    callback_url: str,
    verify_token: str,
    *,
    client: httpx.AsyncClient | None = None,
    request_timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> None:
    """Set the phone number's callback URL override to ``callback_url`` (idempotent).

    Meta verifies the URL with ``verify_token`` before accepting it, so call this only once the
    web tier at ``callback_url`` accepts that token.
    """
    if not re.match(r"^https?://", callback_url) or len(callback_url) > MAX_CALLBACK_LENGTH:
        raise PermanentError(
            f"callback URL must be an http(s) URL of at most {MAX_CALLBACK_LENGTH} characters",
            reason="InvalidCallbackUrl",
            service=SERVICE,
        )
    if not verify_token:
        raise PermanentError(
            "the verify token is empty", reason="InvalidVerifyToken", service=SERVICE
        )
    body = await graph.request(
        "POST",
        _endpoint(graph_url, phone_number_id),
        access_token,
        "set the callback URL override",
        secrets=[verify_token],
        client=client,
        request_timeout=request_timeout,
        retry=retry,
        json={
            "webhook_configuration": {
                "override_callback_uri": callback_url,
                "verify_token": verify_token,
            }
        },
    )
    if body.get("success") is not True:
        raise TemporaryError(
            "Meta did not confirm the callback URL override",
            reason="MetaUnavailable",
            service=SERVICE,
        )


async def unregister_callback(
    graph_url: str,
    phone_number_id: str,
    access_token: str,
    *,
    client: httpx.AsyncClient | None = None,
    request_timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> None:
    """Remove the phone number's callback URL override (idempotent: none set is fine)."""
    await graph.request(
        "POST",
        _endpoint(graph_url, phone_number_id),
        access_token,
        "remove the callback URL override",
        client=client,
        request_timeout=request_timeout,
        retry=retry,
        json={"webhook_configuration": {"override_callback_uri": ""}},
    )


async def current_callback(
    graph_url: str,
    phone_number_id: str,
    access_token: str,
    *,
    client: httpx.AsyncClient | None = None,
    request_timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = DEFAULT_POLICY,
) -> str | None:
    """The phone number's own callback URL override, or None when it has none."""
    body = await graph.request(
        "GET",
        _endpoint(graph_url, phone_number_id),
        access_token,
        "read the webhook configuration",
        client=client,
        request_timeout=request_timeout,
        retry=retry,
        params={"fields": "webhook_configuration"},
    )
    config = body.get("webhook_configuration")
    if not isinstance(config, dict):
        return None
    url = config.get("phone_number")
    return str(url) if url else None
