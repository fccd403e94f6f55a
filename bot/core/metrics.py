"""Every Prometheus metric of the bot, in one module, and the ``/metrics`` rendering.

The web tier and the Celery worker import their metrics from here, so names, labels and
buckets are defined once:

================================== ========= ===========================================
name                               type      labels / meaning
================================== ========= ===========================================
released_webhook_requests_total    counter   ``outcome``: accepted, duplicate,
                                             quarantined, bad_signature, malformed,
                                             too_large, disconnected, busy, ignored,
                                             verify_ok, verify_failed, error (one per
                                             request; error: Redis, the broker or the
                                             database failed, 503; busy: the web tier holds
                                             its budget of request bodies, 503)
released_webhook_quarantined_total counter   ``element`` (message, status, echo, change,
                                             entry, delivery), ``cause`` (invalid, over_cap,
                                             unknown_status): elements of signed deliveries
                                             kept aside with their reason, not queued
released_webhook_changes_ignored_total counter ``field``: changes that are neither messages
                                             nor echoes (calls, account_update, ...; other)
released_webhook_latency_seconds   histogram time to answer a webhook POST
released_messages_received_total   counter   ``kind``: the InboundMessage kind, new ones only
released_tasks_total               counter   ``task``, ``outcome``: success, retry, failure
released_openai_request_seconds    histogram duration of one OpenAI request
released_openai_tokens_total       counter   ``direction``: input, output
released_openai_requests_total     counter   ``outcome``: success, rate_limited, incomplete
                                             (cut short: not sent, FAQ/fallback instead),
                                             empty, server_error, client_error, ...
released_graph_requests_total      counter   ``endpoint``, ``status`` (HTTP status code)
released_graph_errors_total        counter   ``endpoint``, ``kind``, ``code``: Meta's error
                                             verdicts (``released.providers.meta.ErrorKind``)
released_meta_account_unhealthy_total
                                   counter   ``kind``: Meta refused the account (token,
                                             permission, policy, account)
released_messages_held_total       counter   ``outcome``: held (Meta refused the account),
                                             resumed, expired (24-hour window closed meanwhile)
released_messages_unanswered_total counter   ``reason``: why a message got no free-text reply
released_answers_deferred_total    counter   answers put back by the per-user rate limit
released_fallback_answers_total    counter   ``source``: faq, fallback_message
released_handovers_total           counter   ``reason``: conversations handed to a person
                                             (user_request, model_request, fallbacks, order,
                                             staff_echo, foreign_status, admin)
released_handover_notifications_total
                                   counter   ``outcome``: delivered, retry, failed
released_queue_depth               gauge     tasks waiting in the Celery queue (Redis LLEN)
released_conversations_held        gauge     conversations held by a person now (web tier,
                                             read from the database at scrape time)
================================== ========= ===========================================

``released_queue_depth`` is not a stored value: :class:`QueueDepthCollector` reports the
length read from Redis when the metrics are scraped (:func:`refresh_queue_depth`, awaited by the
``/metrics`` route, or a synchronous probe set with :meth:`QueueDepthCollector.set_probe`).
``released_conversations_held`` is read the same way, from the database
(:func:`refresh_conversations_held`).

Multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set before ``prometheus_client`` is
imported (Celery's prefork pool, several uvicorn workers), every process writes its samples to
files there and :func:`render_metrics` aggregates them with ``MultiProcessCollector``; otherwise
the default in-process registry is rendered.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

# In multiprocess mode every process writes its samples into files in this directory as soon as
# a metric is created (at import, below), so it must exist first.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

WEBHOOK_OUTCOMES = (
    "accepted",
    "duplicate",
    "quarantined",
    "bad_signature",
    "malformed",
    "too_large",
    "disconnected",
    "busy",
    "ignored",
    "verify_ok",
    "verify_failed",
    "error",
)
#: ``released_graph_errors_total`` series that alerts watch, present from the start:
#: (kind, code) of a refused token, missing permissions, a policy block, a closed window.
GRAPH_ERROR_SERIES = (
    ("token", "190"),
    ("permission", "10"),
    ("permission", "200"),
    ("policy", "368"),
    ("reengagement", "131047"),
)
ACCOUNT_PROBLEM_KINDS = ("token", "permission", "policy", "account")
HELD_OUTCOMES = ("held", "resumed", "expired")
OPENAI_OUTCOMES = (
    "success",
    "incomplete",
    "empty",
    "rate_limited",
    "server_error",
    "client_error",
    "unavailable",
    "error",
)
UNANSWERED_REASONS = (
    "outside_window",
    "too_old",
    "account_unhealthy",
    "group",
    "not_answered_kind",
    "send_failed",
    "held",
)
HANDOVER_REASONS = (
    "user_request",
    "model_request",
    "fallbacks",
    "order",
    "staff_echo",
    "foreign_status",
    "admin",
)
NOTIFICATION_OUTCOMES = ("delivered", "retry", "failed")
TOKEN_DIRECTIONS = ("input", "output")
FALLBACK_SOURCES = ("faq", "fallback_message")

# ``*_created`` series double the output and no dashboard of ours uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

WEBHOOK_REQUESTS = Counter(
    "released_webhook_requests_total",
    "Webhook requests by outcome.",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "released_webhook_latency_seconds",
    "Time to answer a webhook POST.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
WEBHOOK_QUARANTINED = Counter(
    "released_webhook_quarantined_total",
    "Elements of signed webhook deliveries kept aside (stored with their reason, not queued).",
    ["element", "cause"],
)
WEBHOOK_CHANGES_IGNORED = Counter(
    "released_webhook_changes_ignored_total",
    "Webhook changes that are neither messages nor echoes, by field.",
    ["field"],
)
MESSAGES_RECEIVED = Counter(
    "released_messages_received_total",
    "New inbound WhatsApp messages (duplicates excluded) by kind.",
    ["kind"],
)
TASKS = Counter(
    "released_tasks_total",
    "Celery task runs by task name and outcome.",
    ["task", "outcome"],
)
OPENAI_REQUEST_SECONDS = Histogram(
    "released_openai_request_seconds",
    "Duration of one OpenAI API request.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0),
)
OPENAI_TOKENS = Counter(
    "released_openai_tokens_total",
    "OpenAI tokens used, by direction (input, output).",
    ["direction"],
)
OPENAI_REQUESTS = Counter(
    "released_openai_requests_total",
    "OpenAI API requests by outcome.",
    ["outcome"],
)
GRAPH_REQUESTS = Counter(
    "released_graph_requests_total",
    "Meta Graph API requests by endpoint and HTTP status.",
    ["endpoint", "status"],
)
GRAPH_ERRORS = Counter(
    "released_graph_errors_total",
    "Meta Graph API errors by endpoint, verdict (rate_limit, token, permission, policy, "
    "reengagement, ...) and Meta's error code.",
    ["endpoint", "kind", "code"],
)
META_ACCOUNT_UNHEALTHY = Counter(
    "released_meta_account_unhealthy_total",
    "Times Meta refused the agent's account (token, permission, policy, account): sends stop "
    "and messages are held until it works again.",
    ["kind"],
)
MESSAGES_HELD = Counter(
    "released_messages_held_total",
    "Messages held while Meta refused the account, by outcome (held, resumed, expired).",
    ["outcome"],
)
MESSAGES_UNANSWERED = Counter(
    "released_messages_unanswered_total",
    "Inbound messages that got no free-text reply, by reason.",
    ["reason"],
)
ANSWERS_DEFERRED = Counter(
    "released_answers_deferred_total",
    "Answers put back because their sender was over the per-user rate limit.",
)
FALLBACK_ANSWERS = Counter(
    "released_fallback_answers_total",
    "Answers given without the model, by source (faq, fallback_message).",
    ["source"],
)

HANDOVERS = Counter(
    "released_handovers_total",
    "Conversations handed to a person, by reason.",
    ["reason"],
)
HANDOVER_NOTIFICATIONS = Counter(
    "released_handover_notifications_total",
    "Handover notifications POSTed to HANDOVER_NOTIFY_URL, by outcome.",
    ["outcome"],
)

# Known label values start at zero, so dashboards and alerts see them before the first event.
for _outcome in WEBHOOK_OUTCOMES:
    WEBHOOK_REQUESTS.labels(outcome=_outcome)
for _element in ("message", "status", "echo"):
    WEBHOOK_QUARANTINED.labels(element=_element, cause="invalid")
for _direction in TOKEN_DIRECTIONS:
    OPENAI_TOKENS.labels(direction=_direction)
for _source in FALLBACK_SOURCES:
    FALLBACK_ANSWERS.labels(source=_source)
for _endpoint in ("send", "mark_read"):
    for _status in ("401", "403"):
        GRAPH_REQUESTS.labels(endpoint=_endpoint, status=_status)
    for _kind, _code in GRAPH_ERROR_SERIES:
        GRAPH_ERRORS.labels(endpoint=_endpoint, kind=_kind, code=_code)
for _kind in ACCOUNT_PROBLEM_KINDS:
    META_ACCOUNT_UNHEALTHY.labels(kind=_kind)
for _outcome in OPENAI_OUTCOMES:
    OPENAI_REQUESTS.labels(outcome=_outcome)
for _outcome in HELD_OUTCOMES:
    MESSAGES_HELD.labels(outcome=_outcome)
for _reason in UNANSWERED_REASONS:
    MESSAGES_UNANSWERED.labels(reason=_reason)
for _reason in HANDOVER_REASONS:
    HANDOVERS.labels(reason=_reason)
for _outcome in NOTIFICATION_OUTCOMES:
    HANDOVER_NOTIFICATIONS.labels(outcome=_outcome)

QUEUE_DEPTH_NAME = "released_queue_depth"
_QUEUE_DEPTH_HELP = "Tasks waiting in the Celery queue (Redis LLEN), read at scrape time."
CONVERSATIONS_HELD_NAME = "released_conversations_held"
_CONVERSATIONS_HELD_HELP = "Conversations held by a person now, read at scrape time."


class ReadingCollector(Collector):
    """Reports a gauge from the last reading taken at scrape time, or a synchronous probe.

    Nothing is reported when no reading is available (Redis or the database unreachable),
    rather than a stale or made-up number.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._help = documentation
        self._value: int | None = None
        self._probe: Callable[[], int | None] | None = None

    def set(self, depth: int | None) -> None:
        """Store a reading (``None``: unknown)."""
        self._value = depth

    def set_probe(self, probe: Callable[[], int | None] | None) -> None:
        """Read the depth with ``probe`` on every collection instead of a stored reading."""
        self._probe = probe

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._help)]

    def collect(self) -> Iterable[Metric]:
        value = self._value
        if self._probe is not None:
            try:
                value = self._probe()
            except Exception:
                value = None
        if value is None:
            return []
        return [GaugeMetricFamily(self._name, self._help, value=float(value))]


class QueueDepthCollector(ReadingCollector):
    """``released_queue_depth`` (see :class:`ReadingCollector`)."""

    def __init__(self) -> None:
        super().__init__(QUEUE_DEPTH_NAME, _QUEUE_DEPTH_HELP)


QUEUE_DEPTH = QueueDepthCollector()
REGISTRY.register(QUEUE_DEPTH)
CONVERSATIONS_HELD = ReadingCollector(CONVERSATIONS_HELD_NAME, _CONVERSATIONS_HELD_HELP)
REGISTRY.register(CONVERSATIONS_HELD)


async def refresh_conversations_held(
    count: Callable[[], Awaitable[int]], *, max_wait: float = 1.0
) -> int | None:
    """Read how many conversations are held (``count``: a database query) into
    ``released_conversations_held``; ``None`` (and the gauge omitted) when it fails."""
    held: int | None
    try:
        async with asyncio.timeout(max_wait):
            held = int(await count())
    except Exception:
        held = None
    CONVERSATIONS_HELD.set(held)
    return held


class _AsyncLlen(Protocol):
    def llen(self, name: str) -> Awaitable[int]: ...


async def refresh_queue_depth(
    redis: _AsyncLlen, queue: str = "celery", *, max_wait: float = 1.0
) -> int | None:
    """Read the queue's length from Redis (``LLEN``) into ``released_queue_depth``.

    Returns the depth, or ``None`` (and the gauge is omitted) when Redis does not answer
    within ``max_wait`` seconds.
    """
    depth: int | None
    try:
        async with asyncio.timeout(max_wait):
            depth = int(await redis.llen(queue))
    except Exception:
        depth = None
    QUEUE_DEPTH.set(depth)
    return depth


def multiprocess_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def metrics_registry() -> CollectorRegistry:
    """The registry to expose: the multiprocess aggregate when that mode is on."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render_metrics() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format and its content type, for ``/metrics``."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(QUEUE_DEPTH)
        registry.register(CONVERSATIONS_HELD)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
