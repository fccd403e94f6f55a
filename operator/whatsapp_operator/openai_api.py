"""The operator's calls to OpenAI: how to reach it, the retry policy, what its errors mean.

- :class:`OpenAIParams`: base URL, key, timeout and retries for one agent (the Secret's
  ``baseUrl`` goes through :func:`whatsapp_operator.egress.guarded_client`, which connects only
  where the platform's policy allows). The SDK's own retries are off: calls are retried by
  :mod:`whatsapp_operator.retrying`, with an explicit ``httpx`` timeout.
- :func:`session` / :class:`Session`: ``await s.call("upload the FAQ file", lambda: ...)`` runs
  one SDK call under that policy and turns the SDK's exceptions into domain errors.
- :func:`read`: one ``GET`` without the SDK, under the same policy (the periodic check's
  reads, made for every agent every interval).
- :func:`domain_error`: what an SDK exception means, decided by
  :mod:`released.providers.openai` (the bot's client decides with it too): no answer, 5xx and
  429 are :class:`~whatsapp_operator.errors.TemporaryError` (retried at once, except a 429 for
  ``insufficient_quota``); 401, 403, 400 are :class:`~whatsapp_operator.errors.PermanentError`
  naming what to fix; 404 is :class:`~whatsapp_operator.errors.NotFoundError`. A message
  carries the HTTP status and OpenAI's error code (a short token such as
  ``insufficient_quota``), never text from a response body: the server may be the tenant's,
  and its answer must not be read back through the agent's status.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx2 as httpx
import openai
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from released.agent.policy import Policy
from released.providers import openai as openai_policy

from . import http_clients
from .errors import NotFoundError, PermanentError, ReleasedError, TemporaryError
from .retrying import DEFAULT_POLICY, RetryPolicy, call_with_retries

SERVICE = "openai"
#: Seconds to establish a connection to OpenAI.
CONNECT_TIMEOUT = 5.0


class OpenAIParams(BaseModel):
    """How to reach OpenAI (or an OpenAI-compatible server) for one agent."""

    model_config = ConfigDict(frozen=True)

    api_key: SecretStr
    base_url: str = "https://api.openai.com/v1"
    #: Seconds each phase of a request may take (connecting: at most :data:`CONNECT_TIMEOUT`).
    timeout: float = 30.0
    #: Retries of a call after the first try (:mod:`whatsapp_operator.retrying`; the SDK's
    #: own retries are off, so this is the only policy).
    max_retries: int = Field(default=DEFAULT_POLICY.attempts - 1, ge=0)
    #: Set when ``base_url`` is the tenant's: connections go only where the policy allows.
    policy: Policy | None = None

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.max_retries + 1)

    @property
    def http_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout))

    def http_client(self) -> httpx.AsyncClient:
        """The operator's shared connection pool for this URL
        (:mod:`whatsapp_operator.http_clients`): do not close it."""
        if self.policy is not None:
            return http_clients.guarded(self.policy)
        return http_clients.openai()

    def client(self) -> AsyncOpenAI:
        """An ``AsyncOpenAI`` client for these parameters, over :meth:`http_client`: do not
        close it."""
        return AsyncOpenAI(
            api_key=self.api_key.get_secret_value(),
            base_url=self.base_url,
            timeout=self.http_timeout,
            max_retries=0,
            http_client=self.http_client(),
        )


#: What an error code from a response may look like to be shown: a short token, nothing more.
ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

#: The SDK's exceptions that mean "OpenAI answered with an error, or did not answer".
_API_ERRORS = (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError)


def error_code(exc: openai.APIStatusError) -> str | None:
    """OpenAI's error code of ``exc`` (``insufficient_quota``) when it is a plain short token."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and ERROR_CODE.match(code) else None


def domain_error(exc: BaseException, action: str) -> ReleasedError:
    """The operator's error for an SDK exception; the verdict is ``released.providers.openai``'s.

    The message carries the HTTP status and OpenAI's error code only (never text from the
    body: the server may be the tenant's).
    """
    return error_from_info(
        openai_policy.from_exception(exc), action, timed_out=isinstance(exc, openai.APITimeoutError)
    )


def error_from_info(
    info: openai_policy.OpenAIErrorInfo, action: str, *, timed_out: bool = False
) -> ReleasedError:
    """The operator's error for a parsed OpenAI error (see :func:`domain_error`)."""
    kind = info.kind
    code = info.code if info.code and ERROR_CODE.match(info.code) else None
    common: dict[str, Any] = {"service": SERVICE, "kind": kind.value, "code": code}
    if info.status is None:
        message = (
            f"OpenAI did not answer in time while trying to {action}"
            if timed_out
            else f"cannot reach OpenAI to {action}"
        )
        return TemporaryError(
            message, reason="OpenAIUnavailable", delay=30.0, transient=True, **common
        )
    status = info.status
    message = f"OpenAI refused to {action} (HTTP {status}" + (f", code {code})" if code else ")")
    if kind is openai_policy.ErrorKind.AUTH:
        return PermanentError(
            f"OpenAI rejected the API key (HTTP 401) while trying to {action}; update apiKey in "
            "the Secret named by spec.secrets.openai",
            reason="OpenAIAuthFailed",
            **common,
        )
    if kind is openai_policy.ErrorKind.PERMISSION:
        return PermanentError(message, reason="OpenAIPermissionDenied", **common)
    if kind is openai_policy.ErrorKind.NOT_FOUND:
        return NotFoundError(message, reason="OpenAINotFound", **common)
    if kind in (openai_policy.ErrorKind.RATE_LIMIT, openai_policy.ErrorKind.QUOTA):
        retry_after = info.retry_after
        delay = max(1.0, min(retry_after, 3600.0)) if retry_after is not None else 60.0
        quota = kind is openai_policy.ErrorKind.QUOTA
        return TemporaryError(
            message + (" — the OpenAI account is out of credit" if quota else ""),
            reason="OpenAIQuotaExceeded" if quota else "OpenAIRateLimited",
            delay=delay,
            transient=not quota,  # no backoff buys credit
            retry_after=retry_after,
            **common,
        )
    if kind is openai_policy.ErrorKind.TEMPORARY:
        return TemporaryError(
            message, reason="OpenAIUnavailable", delay=30.0, transient=True, **common
        )
    return PermanentError(message, reason="OpenAIRequestRejected", **common)


T = TypeVar("T")


class Session:
    """An SDK client and the retry policy its calls run under."""

    def __init__(self, client: AsyncOpenAI, retry: RetryPolicy) -> None:
        self.client = client
        self.retry = retry

    async def call(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` under the retry policy; SDK errors become domain errors."""

        async def once() -> T:
            try:
                return await call()
            except _API_ERRORS as exc:
                raise domain_error(exc, action) from None

        return await call_with_retries(once, self.retry)


@asynccontextmanager
async def session(client_or_params: AsyncOpenAI | OpenAIParams) -> AsyncIterator[Session]:
    """A :class:`Session` on ``client_or_params``: a given client is used as it is; parameters
    make a client over the shared connection pool (:meth:`OpenAIParams.client`). Either is left
    open."""
    if isinstance(client_or_params, AsyncOpenAI):
        yield Session(client_or_params, DEFAULT_POLICY)
        return
    yield Session(client_or_params.client(), client_or_params.retry_policy)


async def read(params: OpenAIParams, action: str, path: str) -> dict[str, Any]:
    """``GET {base_url}/{path}`` as a JSON object under the parameters' retry policy, without
    the SDK; errors mean what the SDK's do (:func:`error_from_info`).

    For the periodic check's reads, made for every agent every check interval: the SDK builds
    a request through several layers, about twice the CPU of the request itself
    (``tests/bench/README.md``, "At rest").
    """
    url = f"{params.base_url.rstrip('/')}/{path.lstrip('/')}"
    headers = {
        "Authorization": f"Bearer {params.api_key.get_secret_value()}",
        "OpenAI-Beta": "assistants=v2",  # what the SDK sends for vector stores
    }

    async def once() -> dict[str, Any]:
        try:
            response = await params.http_client().get(
                url, headers=headers, timeout=params.http_timeout
            )
        except httpx.TimeoutException:
            info = openai_policy.OpenAIErrorInfo(
                status=None, kind=openai_policy.ErrorKind.TEMPORARY, code="timeout"
            )
            raise error_from_info(info, action, timed_out=True) from None
        except httpx.HTTPError:
            info = openai_policy.OpenAIErrorInfo(
                status=None, kind=openai_policy.ErrorKind.TEMPORARY, code="connection_error"
            )
            raise error_from_info(info, action) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict):
            status = response.status_code if response.status_code >= 400 else 502
            info = openai_policy.parse_error(status, body, response.headers)
            raise error_from_info(info, action)
        return body

    return await call_with_retries(once, params.retry_policy)
