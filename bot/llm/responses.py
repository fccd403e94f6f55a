"""OpenAI's Responses API, the one call the bot makes: ``POST {OPENAI_BASE_URL}/responses``.

The worker asks the model one thing, ``responses.create`` with a JSON body, and reads four
fields of the answer (``status``, ``incomplete_details``, ``usage``, the text of the
``output_text`` parts). The ``openai`` SDK models the whole API (about 650 modules and 25 MiB
per process, tests/bench/README.md, footprint), so the bot sends this request itself through
``httpx2``, the HTTP client the SDK is built on (and the one the Graph API client uses), with
the headers the SDK sends. The operator, which manages vector stores and files, keeps the SDK.

Errors are :class:`OpenAIRequestError`, carrying :class:`~released.providers.openai.
OpenAIErrorInfo` as decided by :mod:`released.providers.openai` (the operator's policy too):
an error answer is parsed from its status, body and headers; a timeout is ``code="timeout"``
and any other transport failure ``code="connection_error"`` (no answer came: ``status`` is
``None``), as the SDK's ``APITimeoutError`` and ``APIConnectionError`` are mapped. Nothing is
retried here: the caller decides.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from released.providers.openai import ErrorKind, OpenAIErrorInfo, parse_error

__all__ = ["ModelResponse", "OpenAIRequestError", "ResponsesClient"]

USER_AGENT = f"released-bot (python {platform.python_version()})"


class OpenAIRequestError(Exception):
    """A Responses API call gave no usable answer; :attr:`info` says what it means."""

    def __init__(self, info: OpenAIErrorInfo) -> None:
        super().__init__(info.summary())
        self.info = info


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """What the bot reads of a response (the rest of the JSON object is in :attr:`raw`)."""

    raw: dict[str, Any]

    @property
    def status(self) -> str | None:
        value = self.raw.get("status")
        return str(value) if value is not None else None

    @property
    def incomplete_reason(self) -> str | None:
        details = self.raw.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return str(reason) if reason else None

    def usage(self, field: str) -> int:
        """``usage.<field>`` (``input_tokens``, ``output_tokens``, ``total_tokens``), else 0."""
        usage = self.raw.get("usage")
        value = usage.get(field) if isinstance(usage, dict) else None
        return value if isinstance(value, int) and value > 0 else 0

    @property
    def output_text(self) -> str:
        """The ``output_text`` parts of the ``message`` items, joined (the SDK's property)."""
        texts: list[str] = []
        for item in self.raw.get("output") or ():
            if not isinstance(item, dict) or item.get("type") != "message":
                continue
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    text = part.get("text")
                    if isinstance(text, str):
                        texts.append(text)
        return "".join(texts)


class ResponsesClient:
    """``POST /responses`` with a Bearer key; one connection pool, closed by :meth:`close`.

    ``http`` replaces the client (tests pass one with a ``MockTransport``); it is closed too.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        timeout: float,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/responses"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout))

    async def create(self, body: dict[str, Any]) -> ModelResponse:
        """Create a response; raise :class:`OpenAIRequestError` for anything but a 2xx JSON
        object."""
        try:
            response = await self._http.post(self._url, json=body, headers=self._headers)
            await response.aread()
        except httpx.TimeoutException:
            raise OpenAIRequestError(
                OpenAIErrorInfo(status=None, kind=ErrorKind.TEMPORARY, code="timeout")
            ) from None
        except httpx.TransportError:
            raise OpenAIRequestError(
                OpenAIErrorInfo(status=None, kind=ErrorKind.TEMPORARY, code="connection_error")
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not response.is_success:
            raise OpenAIRequestError(parse_error(response.status_code, data, response.headers))
        if not isinstance(data, dict):
            raise OpenAIRequestError(
                OpenAIErrorInfo(
                    status=response.status_code, kind=ErrorKind.UNKNOWN, code="invalid_response"
                )
            )
        return ModelResponse(data)

    async def close(self) -> None:
        await self._http.aclose()
