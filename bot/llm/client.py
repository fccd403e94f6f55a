"""Answering a question with the OpenAI Responses API, grounded in the agent's FAQs.

:func:`answer` is the one entry point the service uses. It asks the model (``responses.create``
with the persona and FAQs as ``instructions``, the earlier turns and the question as ``input``,
and the ``file_search`` tool when the agent has a vector store) and returns an :class:`Answer`
that says where the text came from: ``model``, ``faq`` (lexical FAQ match) or ``fallback``
(``FALLBACK_MESSAGE``). The bot never stays silent: when the model fails and the caller does not
want to retry (``fallback_on_error``), or the error cannot be fixed by retrying, the answer
comes from the FAQs or the fallback message.

The SDK's own retries are disabled (``max_retries=0``): retrying is the Celery task's job, with
backoff, so a retry never hides inside a call that holds a worker. The one retry made here is
for a connection that could not be established (tenacity, once, after a short pause).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import openai
from openai import AsyncOpenAI
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
from bot.llm.faqs import FAQ, build_instructions, match_faq

AnswerSource = Literal["model", "faq", "fallback", "unsupported"]

#: WhatsApp refuses text bodies longer than this.
MAX_WHATSAPP_TEXT = 4096


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
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


def make_client(settings: Settings, **kwargs: Any) -> AsyncOpenAI:
    """An async OpenAI client for ``OPENAI_BASE_URL`` with the SDK's retries turned off."""
    return AsyncOpenAI(
        api_key=settings.secret("openai_api_key"),
        base_url=settings.openai_base_url,
        max_retries=0,
        timeout=settings.openai_timeout_seconds,
        **kwargs,
    )


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if 0 <= seconds <= 3600:
            return seconds
    return None


def _model_error(exc: Exception) -> ModelError:
    """Map an SDK exception to :class:`ModelError` without echoing request details."""
    if isinstance(exc, openai.APITimeoutError):
        return ModelError("OpenAI request timed out", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return ModelError("cannot connect to the OpenAI API", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = getattr(exc, "code", None)
        retryable = status in (408, 409, 429) or status >= 500
        if status == 429 and code == "insufficient_quota":
            retryable = False  # out of credit: no backoff will fix it
        title = f"OpenAI API returned HTTP {status}" + (f" ({code})" if code else "")
        return ModelError(
            title,
            retryable=retryable,
            status=status,
            retry_after=_retry_after(exc.response.headers),
        )
    return ModelError(f"OpenAI client error: {type(exc).__name__}", retryable=False)


def _is_connect_error(exc: BaseException) -> bool:
    return isinstance(exc, openai.APIConnectionError) and not isinstance(
        exc, openai.APITimeoutError
    )


def _outcome(err: ModelError) -> str:
    if err.status == 429:
        return "rate_limited"
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


async def ask_model(
    question: str,
    history: Sequence[Turn],
    faqs: Sequence[FAQ],
    settings: Settings,
    *,
    client: AsyncOpenAI,
    before_request: Callable[[], Awaitable[object]] | None = None,
) -> Answer:
    """One answer from the model; raises :class:`ModelError` when there is none.

    ``before_request`` is awaited before every HTTP request (the rate limiter's ``acquire``).
    """
    kwargs: dict[str, Any] = {
        "model": settings.openai_model,
        "instructions": build_instructions(settings, faqs),
        "input": build_input(history, question),
        "max_output_tokens": settings.openai_max_output_tokens,
        "store": False,
    }
    if settings.openai_vector_store_id:
        kwargs["tools"] = [
            {"type": "file_search", "vector_store_ids": [settings.openai_vector_store_id]}
        ]
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
                    response = await client.responses.create(**kwargs)
                finally:
                    OPENAI_REQUEST_SECONDS.observe(time.perf_counter() - started)
    except openai.OpenAIError as exc:
        err = _model_error(exc)
        OPENAI_REQUESTS.labels(outcome=_outcome(err)).inc()
        raise err from None
    usage = getattr(response, "usage", None)
    input_tokens = int(getattr(usage, "input_tokens", 0) or 0)
    output_tokens = int(getattr(usage, "output_tokens", 0) or 0)
    total = int(getattr(usage, "total_tokens", 0) or 0) or input_tokens + output_tokens
    OPENAI_TOKENS.labels(direction="input").inc(input_tokens)
    OPENAI_TOKENS.labels(direction="output").inc(output_tokens)
    text = (response.output_text or "").strip()
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
    return Answer(text=_clip(settings.fallback_message), source="fallback")


async def answer(
    question: str,
    history: Sequence[Turn],
    faqs: Sequence[FAQ],
    settings: Settings,
    *,
    client: AsyncOpenAI | None = None,
    fallback_on_error: bool = True,
    before_request: Callable[[], Awaitable[object]] | None = None,
) -> Answer:
    """The reply to ``question``: from the model, or from the FAQs / fallback message.

    With ``fallback_on_error=False`` a retryable :class:`ModelError` propagates so that the
    caller can retry later; errors that retrying cannot fix always fall back.
    """
    own_client = client is None
    client = client or make_client(settings)
    try:
        return await ask_model(
            question, history, faqs, settings, client=client, before_request=before_request
        )
    except ModelError as err:
        if err.retryable and not fallback_on_error:
            raise
        return fallback_answer(question, faqs, settings)
    finally:
        if own_client:
            await client.close()
