"""Answering a question with the OpenAI Responses API, grounded in the agent's FAQs.

:func:`answer` is the one entry point the service uses. It asks the model (``responses.create``
with the persona and FAQs as ``instructions``, the earlier turns and the question as ``input``)
and returns an :class:`Answer` that says where the text came from: ``model``, ``faq`` (lexical
FAQ match), ``fallback`` (``FALLBACK_MESSAGE``) or ``handover`` (with ``HANDOVER_ENABLED`` the
request offers the model the ``hand_over_to_person`` function tool, ``bot.handover``; when the
model calls it, the service hands the conversation to a person). The bot never stays silent:
when the model fails and the caller does not want to retry (``fallback_on_error``), or the
error cannot be fixed by retrying, the answer comes from the FAQs or the fallback message.

Each request carries ``reasoning.effort`` and ``text.verbosity`` (``OPENAI_REASONING_EFFORT``,
``OPENAI_VERBOSITY``; only for models that take them), a per-agent ``prompt_cache_key`` (the
instructions are the same for every user of an agent, so OpenAI's prompt cache serves them),
and the caller's ``safety_identifier`` (a salted hash of the user, never the number itself).
The ``file_search`` tool over the agent's vector store is attached only when the FAQs do not
all fit in the instructions. A response that comes back ``incomplete`` (out of output tokens,
reasoning included, or filtered) is never sent cut short: it counts as
``released_openai_requests_total{outcome="incomplete"}`` and the FAQs or the fallback message
answer instead.

The request goes through :mod:`bot.llm.responses` (``httpx2``, without the ``openai`` SDK's
25 MiB); what an error means comes from :mod:`released.providers.openai` (shared with the
operator). Nothing retries inside the HTTP call: retrying is the Celery task's job, with
backoff, so a retry never hides inside a call that holds a worker. Two retries are made here:
once for a connection that could not be established, and, after a 429, as many as
``RATE_LIMIT_RETRIES`` after pausing the agent's shared token bucket (``on_rate_limited``) and
waiting for a token again (``before_request``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx2 as httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random,
)

from bot.core.config import Settings
from bot.core.metrics import (
    FALLBACK_ANSWERS,
    OPENAI_REQUEST_SECONDS,
    OPENAI_REQUESTS,
    OPENAI_TOKENS,
)
from bot.handover import TOOL_NAME, fallback_text, model_tool
from bot.llm.faqs import FAQ, build_instructions, match_faq, needs_file_search
from bot.llm.responses import ModelResponse, OpenAIRequestError, ResponsesClient
from released.providers.meta import MAX_TEXT_LENGTH
from released.providers.openai import ErrorKind, OpenAIErrorInfo, supports_reasoning

AnswerSource = Literal["model", "faq", "fallback", "unsupported", "canned", "handover"]

#: WhatsApp refuses text bodies longer than this.
MAX_WHATSAPP_TEXT = MAX_TEXT_LENGTH
#: After a 429, how many times one request is tried again behind the paused agent bucket
#: before the task's own retry (with backoff) takes over.
RATE_LIMIT_RETRIES = 2


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier message of the conversation, as the model sees it."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply to send and where it came from; ``tokens`` is the model's total usage."""

    text: str
    source: AnswerSource
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class ModelError(Exception):
    """The model gave no usable answer. ``retryable``: 429, 5xx, timeouts, connection errors
    (``retry_after`` seconds when the server said so); otherwise retrying will not help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        kind: ErrorKind | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.kind = kind


def make_client(
    settings: Settings, http_client: httpx.AsyncClient | None = None
) -> ResponsesClient:
    """A Responses API client for ``OPENAI_BASE_URL`` (``http_client`` replaces its pool)."""
    return ResponsesClient(
        settings.secret("openai_api_key"),
        settings.openai_base_url,
        timeout=settings.openai_timeout_seconds,
        http=http_client,
    )


def _model_error(info: OpenAIErrorInfo) -> ModelError:
    """The :class:`ModelError` of a failed request, without echoing request details."""
    if info.status is None and info.kind is ErrorKind.TEMPORARY:
        text = ("OpenAI request timed out" if info.code == "timeout"
                else "cannot connect to the OpenAI API")
    elif info.status is None:
        text = f"OpenAI client error: {info.code}"
    else:
        text = info.summary()
    return ModelError(
        text,
        retryable=info.retryable,
        status=info.status,
        retry_after=info.retry_after,
        kind=info.kind,
    )


def _is_connect_error(exc: BaseException) -> bool:
    return isinstance(exc, OpenAIRequestError) and exc.info.code == "connection_error"


def _outcome(err: ModelError) -> str:
    if err.kind is ErrorKind.RATE_LIMIT:
        return "rate_limited"
    if err.status == 429:
        return "client_error"  # out of quota
    if err.status is None:
        return "unavailable" if err.retryable else "error"
    return "server_error" if err.status >= 500 else "client_error"


def build_input(history: Sequence[Turn], question: str) -> list[dict[str, str]]:
    """The Responses API ``input``: earlier turns as role messages, then the question."""
    items = [{"role": t.role, "content": t.text} for t in history if t.text.strip()]
    items.append({"role": "user", "content": question})
    return items


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_WHATSAPP_TEXT else text[: MAX_WHATSAPP_TEXT - 1] + "…"


def prompt_cache_key(settings: Settings) -> str:
    """The agent's ``prompt_cache_key``: its instructions are shared by all its users."""
    return f"released-agent-{settings.phone_number_id}"


def request_kwargs(
    question: str,
    history: Sequence[Turn],
    faqs: Sequence[FAQ],
    settings: Settings,
    *,
    safety_identifier: str | None = None,
) -> dict[str, Any]:
    """The arguments of ``responses.create`` for one question (see the module doc)."""
    use_store = needs_file_search(settings, faqs)
    kwargs: dict[str, Any] = {
        "model": settings.openai_model,
        "instructions": build_instructions(settings, faqs, file_search=use_store),
        "input": build_input(history, question),
        "max_output_tokens": settings.openai_max_output_tokens,
        "store": False,
        "prompt_cache_key": prompt_cache_key(settings),
    }
    if safety_identifier:
        kwargs["safety_identifier"] = safety_identifier
    if supports_reasoning(settings.openai_model):
        if settings.openai_reasoning_effort:
            kwargs["reasoning"] = {"effort": settings.openai_reasoning_effort}
        if settings.openai_verbosity:
            kwargs["text"] = {"verbosity": settings.openai_verbosity}
    tools: list[dict[str, Any]] = []
    if use_store:
        tools.append(
            {"type": "file_search", "vector_store_ids": [settings.openai_vector_store_id]}
        )
    if settings.handover_enabled:
        tools.append(model_tool())
    if tools:
        kwargs["tools"] = tools
    return kwargs


def asks_for_handover(response: ModelResponse) -> bool:
    """Whether the model called the handover tool (``bot.handover.TOOL_NAME``)."""
    return any(
        isinstance(item, dict)
        and item.get("type") == "function_call"
        and item.get("name") == TOOL_NAME
        for item in (response.raw.get("output") or ())
    )


async def _create(
    client: ResponsesClient,
    kwargs: dict[str, Any],
    before_request: Callable[[], Awaitable[object]] | None,
    on_rate_limited: Callable[[float | None], Awaitable[object]] | None,
) -> ModelResponse:
    """``responses.create`` with the two retries of the module doc."""
    rate_limited = 0
    while True:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_is_connect_error),
                stop=stop_after_attempt(2),
                wait=wait_random(0.2, 1.0),
                reraise=True,
            ):
                with attempt:
                    if before_request is not None:
                        await before_request()
                    started = time.perf_counter()
                    try:
                        return await client.create(kwargs)
                    finally:
                        OPENAI_REQUEST_SECONDS.observe(time.perf_counter() - started)
        except OpenAIRequestError as exc:
            err = _model_error(exc.info)
            OPENAI_REQUESTS.labels(outcome=_outcome(err)).inc()
            if (
                err.kind is ErrorKind.RATE_LIMIT
                and on_rate_limited is not None
                and rate_limited < RATE_LIMIT_RETRIES
            ):
                rate_limited += 1
                await on_rate_limited(err.retry_after)
                continue
            raise err from None


async def ask_model(
    question: str,
    history: Sequence[Turn],
    faqs: Sequence[FAQ],
    settings: Settings,
    *,
    client: ResponsesClient,
    before_request: Callable[[], Awaitable[object]] | None = None,
    on_rate_limited: Callable[[float | None], Awaitable[object]] | None = None,
    safety_identifier: str | None = None,
) -> Answer:
    """One answer from the model; raises :class:`ModelError` when there is none.

    ``before_request`` is awaited before every HTTP request (the rate limiter's ``acquire``);
    ``on_rate_limited(retry_after)`` after a 429 (the agent bucket's ``penalize``), after which
    the request is tried again (at most :data:`RATE_LIMIT_RETRIES` times).
    """
    kwargs = request_kwargs(
        question, history, faqs, settings, safety_identifier=safety_identifier
    )
    response = await _create(client, kwargs, before_request, on_rate_limited)
    input_tokens = response.usage("input_tokens")
    output_tokens = response.usage("output_tokens")
    total = response.usage("total_tokens") or input_tokens + output_tokens
    OPENAI_TOKENS.labels(direction="input").inc(input_tokens)
    OPENAI_TOKENS.labels(direction="output").inc(output_tokens)
    status = response.status
    if status is not None and status != "completed":
        # Cut short (max_output_tokens, reasoning included, or a content filter), failed or
        # still running: whatever text it holds is not a whole answer.
        reason = response.incomplete_reason or status
        OPENAI_REQUESTS.labels(outcome="incomplete").inc()
        raise ModelError(
            f"the model's answer is {status} ({reason}); not sent", retryable=False, status=200
        )
    if settings.handover_enabled and asks_for_handover(response):
        OPENAI_REQUESTS.labels(outcome="success").inc()
        return Answer(text="", source="handover", tokens=total, input_tokens=input_tokens,
                      output_tokens=output_tokens)
    text = response.output_text.strip()
    if not text:
        OPENAI_REQUESTS.labels(outcome="empty").inc()
        raise ModelError("the model returned no text", retryable=False, status=200)
    OPENAI_REQUESTS.labels(outcome="success").inc()
    return Answer(
        text=_clip(text),
        source="model",
        tokens=total,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def fallback_answer(question: str, faqs: Sequence[FAQ], settings: Settings) -> Answer:
    """An answer without the model: the best lexical FAQ match, else ``FALLBACK_MESSAGE``."""
    match = match_faq(question, faqs) if question.strip() else None
    if match is not None:
        FALLBACK_ANSWERS.labels(source="faq").inc()
        return Answer(text=_clip(match[0].a), source="faq")
    FALLBACK_ANSWERS.labels(source="fallback_message").inc()
    return Answer(text=_clip(fallback_text(settings)), source="fallback")


async def answer(
    question: str,
    history: Sequence[Turn],
    faqs: Sequence[FAQ],
    settings: Settings,
    *,
    client: ResponsesClient | None = None,
    fallback_on_error: bool = True,
    before_request: Callable[[], Awaitable[object]] | None = None,
    on_rate_limited: Callable[[float | None], Awaitable[object]] | None = None,
    safety_identifier: str | None = None,
) -> Answer:
    """The reply to ``question``: from the model, or from the FAQs / fallback message.

    With ``fallback_on_error=False`` a retryable :class:`ModelError` propagates so that the
    caller can retry later; errors that retrying cannot fix always fall back.
    """
    own_client = client is None
    client = client or make_client(settings)
    try:
        return await ask_model(
            question,
            history,
            faqs,
            settings,
            client=client,
            before_request=before_request,
            on_rate_limited=on_rate_limited,
            safety_identifier=safety_identifier,
        )
    except ModelError as err:
        if err.retryable and not fallback_on_error:
            raise
        return fallback_answer(question, faqs, settings)
    finally:
        if own_client:
            await client.close()
