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

from whatsapp_operator.errors import PermanentError, TemporaryError, redact

SERVICE = "meta"
DEFAULT_TIMEOUT = 15.0
MAX_CALLBACK_LENGTH = 200

#: Graph API error codes worth retrying: unknown/temporary errors, rate limits, throughput.
RETRYABLE_CODES = frozenset({1, 2, 4, 17, 32, 341, 368, 613, 80007, 130429, 131000, 131016, 131056})
#: The verification handshake against the new callback failed (web tier not ready yet?).
CALLBACK_VERIFICATION_FAILED = 2200
#: Access token invalid or expired.
TOKEN_CODES = frozenset({102, 190})
#: Permission errors: 10 and 200-299.
PERMISSION_CODES = frozenset({3, 10, *range(200, 300)})

_DIGITS = re.compile(r"^[0-9]{1,32}$")


def _endpoint(graph_url: str, phone_number_id: str) -> str:
    if not _DIGITS.match(phone_number_id):
        raise PermanentError(
            "phoneNumberId must be the digits of Meta's phone number ID",
            reason="InvalidPhoneNumberId",
            service=SERVICE,
        )
    return f"{graph_url.rstrip('/')}/{phone_number_id}"


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return max(1.0, min(float(value), 3600.0))
    except ValueError:
        return default


def _error_from_response(response: httpx.Response, action: str, secrets: list[str]) -> Exception:
    """Map a Graph API error answer to a domain error (without any secret in it)."""
    status = response.status_code
    code: int | None = None
    subcode: int | None = None
    text = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error: dict[str, Any] = body["error"]
        code = error.get("code") if isinstance(error.get("code"), int) else None
        subcode = (
            error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None
        )
        text = str(error.get("message") or "")
        details = (
            (error.get("error_data") or {}) if isinstance(error.get("error_data"), dict) else {}
        )
        if details.get("details"):
            text = f"{text}: {details['details']}"
    text = redact(text[:300], secrets) or response.reason_phrase
    where = f"HTTP {status}" + (f", code {code}" if code is not None else "")
    where += f", subcode {subcode}" if subcode is not None else ""
    message = f"Meta refused to {action} ({where}): {text}"
    if code == CALLBACK_VERIFICATION_FAILED:
        return TemporaryError(
            message + " — Meta could not verify the callback URL; is the web tier reachable "
            "at it and serving the current verify token?",
            reason="WebhookVerificationFailed",
            service=SERVICE,
            delay=60.0,
        )
    if status == 429 or status >= 500 or (code is not None and code in RETRYABLE_CODES):
        return TemporaryError(
            message,
            reason="MetaRateLimited"
            if status == 429 or code in (4, 17, 32, 613, 80007, 130429)
            else "MetaUnavailable",
            service=SERVICE,
            delay=_retry_after(response, 60.0 if status == 429 else 30.0),
        )
    if status == 401 or (code is not None and code in TOKEN_CODES):
        return PermanentError(
            f"Meta rejected the access token while trying to {action} ({where}); update "
            "accessToken in the Secret named by spec.secrets.meta",
            reason="MetaTokenRejected",
            service=SERVICE,
        )
    if status == 403 or (code is not None and code in PERMISSION_CODES):
        return PermanentError(
            message + " — the token lacks a permission (whatsapp_business_management?)",
            reason="MetaPermissionDenied",
            service=SERVICE,
        )
    if status in (408, 409):
        return TemporaryError(message, reason="MetaUnavailable", service=SERVICE, delay=30.0)
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
