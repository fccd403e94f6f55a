"""Meta's Graph API (WhatsApp Cloud API): sending text replies and marking messages as read.

``POST {META_GRAPH_URL}/{phone_number_id}/messages`` with the agent's Bearer token. Errors come
back as ``{"error": {"message", "type", "code", "error_subcode", "error_data": {"details"},
"fbtrace_id"}}`` and become typed exceptions:

- :class:`GraphRetryableError`: HTTP 429 and 5xx, throughput and rate-limit codes (130429,
  131056, 4, 80007, 131048), temporary server codes (1, 2, 131000, 131016, 133004), timeouts
  and connection errors. ``retry_after`` carries the ``Retry-After`` header when Meta sends one.
- :class:`GraphPermanentError`: every other 4xx, among them 131047 (more than 24 hours since
  the user's last message: only a template may be sent) and 190 (bad access token). Retrying
  cannot help; the message is recorded as failed.

Meta decides on ``code`` more than on the HTTP status (it answers some rate limits with 400),
so the code wins when both are present. The access token never appears in an exception: error
texts are built from Meta's error body and the endpoint name only.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import SecretStr

from bot.core.config import Settings
from bot.core.logging import redact
from bot.core.metrics import GRAPH_REQUESTS

#: Error codes that mean "slow down" or "try again later".
RETRYABLE_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131048, 131056, 133004})
#: Outside the 24-hour customer-service window: a free-form reply is refused.
CODE_REENGAGEMENT = 131047
#: WhatsApp's limit on a text message body.
MAX_TEXT_LENGTH = 4096


class GraphError(Exception):
    """A Graph API call failed. ``code``/``subcode``/``title``/``details``/``fbtrace_id`` come
    from Meta's error body when there was one; ``status`` is the HTTP status (``None`` when no
    answer came at all)."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        title: str | None = None,
        details: str | None = None,
        fbtrace_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.subcode = subcode
        self.title = title
        self.details = details
        self.fbtrace_id = fbtrace_id
        self.retry_after = retry_after


class GraphRetryableError(GraphError):
    """Worth retrying later (rate limits, server errors, timeouts)."""

    retryable = True


class GraphPermanentError(GraphError):
    """Retrying will not help (24-hour window closed, bad recipient, bad token...)."""


@dataclass(frozen=True, slots=True)
class SentMessage:
    """Meta's answer to a send: the new message's wamid and the recipient's WhatsApp ID."""

    wamid: str
    wa_id: str | None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 86400 else None


def error_from_response(response: httpx.Response, endpoint: str) -> GraphError:
    """The typed exception for a Graph API error answer."""
    status = response.status_code
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
    subcode = error.get("error_subcode")
    subcode = int(subcode) if isinstance(subcode, int) else None
    # Redacted before truncated: a secret straddling the cut would otherwise leave a piece.
    title = error.get("error_user_title") or error.get("message")
    title = redact(str(title))[:300] if title else None
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    details = redact(str(details))[:500] if details else None
    trace = error.get("fbtrace_id")
    if code is not None:
        retryable = code in RETRYABLE_CODES or (status >= 500 and code != CODE_REENGAGEMENT)
    else:
        retryable = status == 429 or status >= 500 or status == 408
    summary = f"Graph API {endpoint}: HTTP {status}"
    if code is not None:
        summary += f", code {code}"
    if title:
        summary += f": {title}"
    cls = GraphRetryableError if retryable else GraphPermanentError
    return cls(
        summary,
        status=status,
        code=code,
        subcode=subcode,
        title=title,
        details=details,
        fbtrace_id=str(trace) if trace else None,
        retry_after=_retry_after(response),
    )


class GraphClient:
    """Async client of one agent's phone number. Use as ``async with GraphClient(s) as g:`` or
    call :meth:`aclose`; pass ``http`` to share or mock an ``httpx.AsyncClient``."""

    def __init__(
        self,
        settings: Settings,
        *,
        http: httpx.AsyncClient | None = None,
        phone_number_id: str | None = None,
    ) -> None:
        self._base = settings.meta_graph_url.rstrip("/")
        self._token = SecretStr(settings.secret("meta_access_token"))
        self.phone_number_id = phone_number_id or settings.phone_number_id
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=settings.graph_timeout_seconds)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._own_http:
            await self._http.aclose()

    async def _post(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._base}/{self.phone_number_id}/messages"
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        try:
            response = await self._http.post(url, json=payload, headers=headers)
        except httpx.TimeoutException:
            GRAPH_REQUESTS.labels(endpoint=endpoint, status="timeout").inc()
            raise GraphRetryableError(f"Graph API {endpoint}: timed out") from None
        except httpx.TransportError as exc:
            GRAPH_REQUESTS.labels(endpoint=endpoint, status="connection_error").inc()
            raise GraphRetryableError(
                f"Graph API {endpoint}: connection failed ({type(exc).__name__})"
            ) from None
        GRAPH_REQUESTS.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        if response.is_success:
            try:
                body = response.json()
            except ValueError:
                body = {}
            return body if isinstance(body, dict) else {}
        raise error_from_response(response, endpoint)

    async def send_text(
        self, to: str, text: str, *, reply_to: str | None = None, preview_url: bool = False
    ) -> SentMessage:
        """Send ``text`` to WhatsApp user ``to``, quoting message ``reply_to`` when given."""
        body = text.strip() or "…"
        if len(body) > MAX_TEXT_LENGTH:
            body = body[: MAX_TEXT_LENGTH - 1] + "…"
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"preview_url": preview_url, "body": body},
        }
        if reply_to:
            payload["context"] = {"message_id": reply_to}
        result = await self._post("send", payload)
        messages = result.get("messages")
        wamid = messages[0].get("id") if isinstance(messages, list) and messages else None
        if not isinstance(wamid, str) or not wamid:
            # Accepted, but we cannot track it: do not send again (it may have been delivered).
            raise GraphPermanentError("Graph API send: answer without a message id")
        contacts = result.get("contacts")
        wa_id = contacts[0].get("wa_id") if isinstance(contacts, list) and contacts else None
        return SentMessage(wamid=wamid, wa_id=wa_id if isinstance(wa_id, str) else None)

    async def mark_read(self, message_id: str) -> bool:
        """Mark an inbound message as read (the user sees blue ticks); ``True`` on success."""
        result = await self._post(
            "mark_read",
            {"messaging_product": "whatsapp", "status": "read", "message_id": message_id},
        )
        return bool(result.get("success", True))
