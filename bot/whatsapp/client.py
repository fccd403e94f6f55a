"""Meta's Graph API (WhatsApp Cloud API): sending replies and marking messages as read.

``POST {META_GRAPH_URL}/{phone_number_id}/messages`` with the agent's Bearer token. A user is
addressed by phone number in ``to`` or, when only their business-scoped user ID (BSUID) is
known, in ``recipient`` (:func:`released.providers.meta.address_fields`).

What an error means is decided in one place shared with the operator,
:mod:`released.providers.meta`; here it becomes a typed exception carrying that verdict
(:attr:`GraphError.info`):

- :class:`GraphRetryableError`: rate limits and throughput (130429, 131056, 4, 80007...),
  Meta's own failures (1, 2, 131000...), 429 and 5xx, timeouts and connection errors.
  ``retry_after`` carries the ``Retry-After`` header when Meta sends one.
- :class:`GraphPermanentError`: everything else; among them the account problems
  (:attr:`GraphError.account_problem`: token 190, permission 10/200-299, policy 368...) after
  which no send can succeed until a person acts, and 131047 (more than 24 hours since the
  user's last message: only a template may be sent).

Every error is counted in ``released_graph_errors_total{endpoint, kind, code}``. The access
token never appears in an exception: error texts are built from Meta's error body and the
endpoint name only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

import httpx2 as httpx
from pydantic import SecretStr

from bot.core.config import Settings
from bot.core.logging import redact
from bot.core.metrics import GRAPH_ERRORS, GRAPH_REQUESTS
from released.providers.meta import (
    MAX_TEXT_LENGTH,
    ErrorKind,
    GraphErrorInfo,
    address_fields,
    parse_error,
)

__all__ = [
    "MAX_TEXT_LENGTH",
    "GraphClient",
    "GraphError",
    "GraphPermanentError",
    "GraphRetryableError",
    "SentMessage",
    "error_from_response",
]


class GraphError(Exception):
    """A Graph API call failed; :attr:`info` is Meta's error, parsed and classified
    (``status`` is ``None`` when no answer came at all)."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        info: GraphErrorInfo | None = None,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if info is None:
            info = GraphErrorInfo(
                status=status,
                code=code,
                kind=ErrorKind.TEMPORARY if self.retryable else ErrorKind.UNKNOWN,
                retry_after=retry_after,
            )
        self.info = info

    @property
    def status(self) -> int | None:
        return self.info.status

    @property
    def code(self) -> int | None:
        return self.info.code

    @property
    def subcode(self) -> int | None:
        return self.info.subcode

    @property
    def kind(self) -> ErrorKind:
        return self.info.kind

    @property
    def title(self) -> str | None:
        return self.info.title

    @property
    def details(self) -> str | None:
        return self.info.details

    @property
    def fbtrace_id(self) -> str | None:
        return self.info.fbtrace_id

    @property
    def retry_after(self) -> float | None:
        return self.info.retry_after

    @property
    def account_problem(self) -> bool:
        """The token, a permission, a policy block or the account stops every send."""
        return self.info.account_problem


class GraphRetryableError(GraphError):
    """Worth retrying later (rate limits, server errors, timeouts)."""

    retryable = True


class GraphPermanentError(GraphError):
    """Retrying will not help (24-hour window closed, bad recipient, bad token...)."""


@dataclass(frozen=True, slots=True)
class SentMessage:
    """Meta's answer to a send: the new message's wamid and the recipient as Meta names them
    (``wa_id``: phone number, ``None`` for a user known only by BSUID; ``user_id``: BSUID)."""

    wamid: str
    wa_id: str | None
    user_id: str | None = None


def _count_error(endpoint: str, info: GraphErrorInfo) -> None:
    GRAPH_ERRORS.labels(
        endpoint=endpoint,
        kind=info.kind.value,
        code=str(info.code) if info.code is not None else "none",
    ).inc()


def error_from_info(info: GraphErrorInfo, endpoint: str) -> GraphError:
    """The typed exception for a parsed Graph API error (counted in the metrics). Meta's texts
    are redacted before they are clipped: a secret straddling the cut would leave a piece."""
    _count_error(endpoint, info)
    info = replace(
        info,
        title=redact(info.title)[:300] if info.title else None,
        details=redact(info.details)[:500] if info.details else None,
    )
    cls = GraphRetryableError if info.retryable else GraphPermanentError
    return cls(info.summary(endpoint)[:600], info=info)


def error_from_response(response: httpx.Response, endpoint: str) -> GraphError:
    """The typed exception for a Graph API error answer."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_from_info(parse_error(response.status_code, body, response.headers), endpoint)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


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

    async def _request(
        self, method: str, path: str, endpoint: str, payload: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        url = f"{self._base}/{path}"
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        try:
            response = await self._http.request(method, url, json=payload, headers=headers)
        except httpx.TimeoutException:
            GRAPH_REQUESTS.labels(endpoint=endpoint, status="timeout").inc()
            raise error_from_info(
                GraphErrorInfo(status=None, code=None, kind=ErrorKind.TEMPORARY,
                               title="timed out"),
                endpoint,
            ) from None
        except httpx.TransportError as exc:
            GRAPH_REQUESTS.labels(endpoint=endpoint, status="connection_error").inc()
            raise error_from_info(
                GraphErrorInfo(status=None, code=None, kind=ErrorKind.TEMPORARY,
                               title=f"connection failed ({type(exc).__name__})"),
                endpoint,
            ) from None
        GRAPH_REQUESTS.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        if response.is_success:
            try:
                body = response.json()
            except ValueError:
                body = {}
            return body if isinstance(body, dict) else {}
        raise error_from_response(response, endpoint)

    async def _post(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", f"{self.phone_number_id}/messages", endpoint, payload)

    async def _send(
        self, address: str, kind: str, content: dict[str, Any], reply_to: str | None
    ) -> SentMessage:
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            **address_fields(address),
            "type": kind,
            kind: content,
        }
        if reply_to:
            payload["context"] = {"message_id": reply_to}
        result = await self._post("send", payload)
        messages = result.get("messages")
        wamid = messages[0].get("id") if isinstance(messages, list) and messages else None
        if not isinstance(wamid, str) or not wamid:
            # Accepted, but we cannot track it: do not send again (it may have been delivered).
            raise GraphPermanentError(
                "Graph API send: answer without a message id",
                info=GraphErrorInfo(status=200, code=None, kind=ErrorKind.UNKNOWN),
            )
        contacts = result.get("contacts")
        contact = contacts[0] if isinstance(contacts, list) and contacts else {}
        contact = contact if isinstance(contact, dict) else {}
        return SentMessage(
            wamid=wamid, wa_id=_text(contact.get("wa_id")), user_id=_text(contact.get("user_id"))
        )

    async def send_text(
        self, to: str, text: str, *, reply_to: str | None = None, preview_url: bool = False
    ) -> SentMessage:
        """Send ``text`` to the user ``to`` (a phone number, or a BSUID sent as ``recipient``),
        quoting message ``reply_to`` when given."""
        body = text.strip() or "…"
        if len(body) > MAX_TEXT_LENGTH:
            body = body[: MAX_TEXT_LENGTH - 1] + "…"
        return await self._send(to, "text", {"preview_url": preview_url, "body": body}, reply_to)

    async def send_template(
        self, to: str, name: str, language: str, *, reply_to: str | None = None
    ) -> SentMessage:
        """Send the approved template ``name`` in ``language`` (e.g. ``en_US``) to ``to``: the
        only kind of message Meta accepts outside the 24-hour customer-service window."""
        return await self._send(
            to, "template", {"name": name, "language": {"code": language}}, reply_to
        )

    async def mark_read(self, message_id: str, *, typing: bool = False) -> bool:
        """Mark an inbound message as read (the user sees blue ticks) and, with ``typing``,
        show the typing indicator until the reply arrives (or 25 s); ``True`` on success."""
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        }
        if typing:
            payload["typing_indicator"] = {"type": "text"}
        result = await self._post("mark_read", payload)
        return bool(result.get("success", True))

    async def check_phone_number(self) -> dict[str, Any]:
        """Read the phone number with the agent's token (``GET /{phone_number_id}``): succeeds
        when the token works; raises :class:`GraphError` otherwise (the account-health probe)."""
        return await self._request(
            "GET", f"{self.phone_number_id}?fields=id", "phone_number"
        )
