"""Explicit, bounded retries of the operator's calls to OpenAI and Meta (with tenacity).

A call that fails with a :class:`~whatsapp_operator.errors.TemporaryError` marked
``transient`` (no answer, a 5xx, a rate limit: what ``released.providers`` calls retryable) is
tried again at once, a few times, with exponential backoff and jitter, and never sooner than the
server's ``Retry-After``. A server that asks for a longer wait than
:attr:`RetryPolicy.max_inline_wait` is not waited for here: the error goes up with its delay,
and the reconciliation is retried that much later (a pass never sleeps for minutes). Anything
else (a refused token, a bad request, a failed webhook verification) is raised at once.

The SDK's own retries are off (``max_retries=0``), so the policy is this one, in one place::

    body = await call_with_retries(lambda: graph.request(...), DEFAULT_POLICY)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .errors import TemporaryError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is retried before its error goes up."""

    #: Tries in all (the first one included).
    attempts: int = 3
    #: The first backoff (seconds); it doubles each time, with up to ``initial`` of jitter.
    initial: float = 0.5
    #: The longest backoff between two tries (seconds).
    max_backoff: float = 4.0
    #: A ``Retry-After`` longer than this is left to the next pass instead.
    max_inline_wait: float = 10.0

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another try now."""
        if not isinstance(exc, TemporaryError) or not exc.transient:
            return False
        return exc.retry_after is None or exc.retry_after <= self.max_inline_wait

    def wait(self, state: RetryCallState) -> float:
        """The backoff before the next try: exponential with jitter, at least ``Retry-After``."""
        backoff = wait_exponential_jitter(
            initial=self.initial, max=self.max_backoff, jitter=self.initial
        )(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = exc.retry_after if isinstance(exc, TemporaryError) else None
        return max(backoff, retry_after or 0.0)


#: The operator's policy for OpenAI and Graph calls: 3 tries within about 2 seconds.
DEFAULT_POLICY = RetryPolicy()
#: No retries (a caller that loops itself, or a test of a single answer).
NO_RETRIES = RetryPolicy(attempts=1)


async def call_with_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy = DEFAULT_POLICY
) -> T:
    """``await call()``, retried under ``policy``; the last error is raised as it is."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=policy.wait,
        retry=retry_if_exception(policy.retries),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
