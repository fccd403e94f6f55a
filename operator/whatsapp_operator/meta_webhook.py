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

The access token travels only in the ``Authorization`` header. Errors are mapped from Meta's
error body (``error.code``, ``error.error_subcode``, ``error.message``) and the HTTP status to
:class:`~whatsapp_operator.errors.TemporaryError` (rate limits, 5xx, transient codes, failed
handshake) or :class:`~whatsapp_operator.errors.PermanentError` (bad token, missing permission,
invalid parameter); their messages never contain the access token or the verify token.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from released.providers.meta import ErrorKind, parse_error
from whatsapp_operator.errors import PermanentError, TemporaryError, redact

SERVICE = "meta"
DEFAULT_TIMEOUT = 15.0
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


def _delay(seconds: float | None, default: float) -> float:
    return default if seconds is None else max(1.0, min(seconds, 3600.0))


def _error_from_response(response: httpx.Response, action: str, secrets: list[str]) -> Exception:
    """Map a Graph API error answer to a domain error (without any secret in it). What a code
    means is Meta's error policy shared with the bot (:mod:`released.providers.meta`)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    info = parse_error(response.status_code, body, response.headers)
    text = info.title or ""
    if info.details:
        text = f"{text}: {info.details}"
    # Redacted before it is cut: a secret straddling the cut would leave a piece behind.
    text = redact(text, secrets)[:300] or response.reason_phrase
    where = f"HTTP {info.status}" + (f", code {info.code}" if info.code is not None else "")
    where += f", subcode {info.subcode}" if info.subcode is not None else ""
    message = f"Meta refused to {action} ({where}): {text}"
    kind = info.kind
    if kind is ErrorKind.WEBHOOK_VERIFICATION:
        return TemporaryError(
            message + " — Meta could not verify the callback URL; is the web tier reachable "
            "at it and serving the current verify token?",
            reason="WebhookVerificationFailed",
            service=SERVICE,
            delay=60.0,
        )
    if kind is ErrorKind.RATE_LIMIT:
        return TemporaryError(
            message, reason="MetaRateLimited", service=SERVICE,
            delay=_delay(info.retry_after, 60.0),
        )
    if kind is ErrorKind.TEMPORARY:
        return TemporaryError(
            message, reason="MetaUnavailable", service=SERVICE,
            delay=_delay(info.retry_after, 30.0),
        )
    if kind is ErrorKind.POLICY:  # a policy block lasts hours: try again much later
        return TemporaryError(
            message + " — the account is blocked for a policy violation (code 368)",
            reason="MetaPolicyBlocked",
            service=SERVICE,
            delay=_delay(info.retry_after, 900.0),
        )
    if kind is ErrorKind.TOKEN:
        return PermanentError(
            f"Meta rejected the access token while trying to {action} ({where}); update "
            "accessToken in the Secret named by spec.secrets.meta",
            reason="MetaTokenRejected",
            service=SERVICE,
        )
    if kind is ErrorKind.PERMISSION:
        return PermanentError(
            message + " — the token lacks a permission (whatsapp_business_management?)",
            reason="MetaPermissionDenied",
            service=SERVICE,
        )
    if kind is ErrorKind.ACCOUNT:
        return PermanentError(
            message + " — the WhatsApp Business Account or the number cannot be used",
            reason="MetaAccountRestricted",
            service=SERVICE,
        )
    return PermanentError(message, reason="MetaRequestInvalid", service=SERVICE)


async def _request(
    method: str,
    url: str,
    access_token: str,
    action: str,
    *,
    secrets: list[str],
    client: httpx.AsyncClient | None,
    request_timeout: float,
    json: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    all_secrets = [access_token, *secrets]
    try:
        if client is not None:
            response = await client.request(
                method, url, headers=headers, json=json, params=params, timeout=request_timeout
            )
        else:
            async with httpx.AsyncClient(timeout=request_timeout) as own:
                response = await own.request(method, url, headers=headers, json=json, params=params)
    except httpx.TimeoutException:
        raise TemporaryError(
            f"Meta did not answer in time while trying to {action}",
            reason="MetaUnavailable",
            service=SERVICE,
            delay=30.0,
        ) from None
    except httpx.HTTPError as exc:
        raise TemporaryError(
            f"cannot reach Meta's Graph API to {action} ({type(exc).__name__})",
            reason="MetaUnavailable",
            service=SERVICE,
            delay=30.0,
        ) from None
    if response.status_code >= 400:
        raise _error_from_response(response, action, all_secrets)
    try:
        body = response.json()
    except ValueError:
        raise TemporaryError(
            f"Meta answered {action} with a body that is not JSON",
            reason="MetaUnavailable",
            service=SERVICE,
        ) from None
    if not isinstance(body, dict):
        raise TemporaryError(
            f"Meta answered {action} with an unexpected body",
            reason="MetaUnavailable",
            service=SERVICE,
        )
    if isinstance(body.get("error"), dict):
        raise _error_from_response(response, action, all_secrets)
    return body


async def register_callback(
    graph_url: str,
    phone_number_id: str,
    access_token: str,
    callback_url: str,
    verify_token: str,
    *,
    client: httpx.AsyncClient | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
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
    body = await _request(
        "POST",
        _endpoint(graph_url, phone_number_id),
        access_token,
        "set the callback URL override",
        secrets=[verify_token],
        client=client,
        request_timeout=request_timeout,
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
    request_timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Remove the phone number's callback URL override (idempotent: none set is fine)."""
    await _request(
        "POST",
        _endpoint(graph_url, phone_number_id),
        access_token,
        "remove the callback URL override",
        secrets=[],
        client=client,
        request_timeout=request_timeout,
        json={"webhook_configuration": {"override_callback_uri": ""}},
    )


async def current_callback(
    graph_url: str,
    phone_number_id: str,
    access_token: str,
    *,
    client: httpx.AsyncClient | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
) -> str | None:
    """The phone number's own callback URL override, or None when it has none."""
    body = await _request(
        "GET",
        _endpoint(graph_url, phone_number_id),
        access_token,
        "read the webhook configuration",
        secrets=[],
        client=client,
        request_timeout=request_timeout,
        params={"fields": "webhook_configuration"},
    )
    config = body.get("webhook_configuration")
    if not isinstance(config, dict):
        return None
    url = config.get("phone_number")
    return str(url) if url else None
