"""Meta's webhook: the verification handshake (GET) and signed event deliveries (POST).

``GET /webhook``: Meta calls it with ``hub.mode=subscribe``, ``hub.verify_token`` and
``hub.challenge`` when the callback URL is set; the challenge is echoed (``text/plain``,
``X-Content-Type-Options: nosniff``, 200) only when the token matches ``META_VERIFY_TOKEN``
(or the previous one during a rotation; constant-time comparison), else 403.

``POST /webhook``, in order, answering at once (the worker does the slow part):

1. The body is read as it streams in, chunked or not, and refused with 413 (and the
   connection closed) as soon as it exceeds ``WEBHOOK_MAX_BODY_BYTES`` (3 MiB by default,
   Meta's maximum is 3 MB); a declared ``Content-Length`` above it is refused before a byte is
   read. All bodies being read or handled at once share ``WEBHOOK_BODY_BUDGET_BYTES``; beyond
   it the delivery gets 503 and Meta retries, instead of the process running out of memory.
2. ``X-Hub-Signature-256`` is checked over the raw body with ``META_APP_SECRET``: 401 and
   nothing parsed, stored or queued when it is missing or wrong.
3. Once the signature holds, the answer is 200 whatever the elements hold. Only a body that is
   not a JSON object gets 400. Each message, status and echo is parsed on its own
   (``bot.whatsapp.payload``); a malformed one, or one beyond ``WEBHOOK_MAX_EVENTS`` per
   delivery, is quarantined: stored with its reason in ``quarantined_events``, counted in
   ``released_webhook_quarantined_total``, never queued; the others proceed.
4. Changes for another phone number id are acknowledged and ignored, with a log line; changes
   whose ``field`` is neither ``messages`` nor ``smb_message_echoes`` (calls, account and
   template updates) are counted and ignored.
5. Messages and echoes are stored in the database's inbox (``bot.storage.ingest``, one statement
   for the deliveries of the moment), so that the queue carries only their wamid and no message
   text ever reaches Redis. Each is then de-duplicated by wamid in Redis (``bot.dedup``) and,
   when new, queued as ``bot.tasks.process_message`` / ``bot.tasks.process_echo`` (one atomic
   Lua step when the broker is the same Redis, see ``bot.queue``); the inbox row of a
   redelivery of a message already handled is deleted again. Each status is queued as
   ``bot.tasks.record_status``.
6. ``200 {"status": "ok"}``. If Redis, the broker or the database fails, 503: Meta redelivers
   later; no wamid stays claimed for a message that was not queued, and inbox rows and
   quarantined elements are stored once however often the delivery comes.

Timeouts for slow headers and bodies are the HTTP server's (``bot.serving``).

Every request counts once in ``released_webhook_requests_total{outcome}``.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from redis.asyncio import Redis
from starlette.requests import ClientDisconnect

from bot import dedup
from bot.api.deps import SettingsDep
from bot.core.config import Settings
from bot.core.metrics import (
    MESSAGES_RECEIVED,
    WEBHOOK_CHANGES_IGNORED,
    WEBHOOK_LATENCY,
    WEBHOOK_QUARANTINED,
    WEBHOOK_REQUESTS,
)
from bot.queue import TaskPublisher, enqueue_echo_once, enqueue_message_once, enqueue_status
from bot.storage.ingest import ECHO, MESSAGE, IngestStore, event_json
from bot.whatsapp.payload import WHATSAPP_OBJECT, Delivery, PayloadError, parse_delivery
from bot.whatsapp.signature import SIGNATURE_HEADER, verify

log = structlog.get_logger(__name__)
router = APIRouter(tags=["webhook"])

_NOSNIFF = {"X-Content-Type-Options": "nosniff"}
_CLOSE = {"Connection": "close"}


def _count(outcome: str) -> None:
    WEBHOOK_REQUESTS.labels(outcome=outcome).inc()


def _problem(
    status_code: int, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


@router.get("/webhook", response_class=PlainTextResponse)
async def verify_subscription(
    settings: SettingsDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
) -> PlainTextResponse:
    """Meta's verification handshake: echo ``hub.challenge`` when the verify token matches."""
    # During a credential rotation the previous token stays valid until the pods have rolled.
    accepted = [settings.meta_verify_token, settings.meta_verify_token_previous]
    given = (token or "").encode("utf-8")
    token_ok = token is not None and any(
        # Compare against every accepted token, so timing says nothing about which matched.
        [hmac.compare_digest(given, t.get_secret_value().encode("utf-8")) for t in accepted if t]
    )
    if mode == "subscribe" and token_ok and challenge is not None:
        _count("verify_ok")
        log.info("webhook.verified")
        # text/plain and nosniff: the echoed challenge is never rendered as HTML by a browser.
        return PlainTextResponse(challenge, headers=_NOSNIFF)
    _count("verify_failed")
    log.warning(
        "webhook.verify_failed",
        mode=mode,
        token_present=token is not None,
        challenge_present=challenge is not None,
    )
    return PlainTextResponse("Forbidden", status_code=403, headers=_NOSNIFF)


class _BodyRefused(Exception):
    """The body was not read: ``response`` says why."""

    def __init__(self, outcome: str, response: Response) -> None:
        self.outcome = outcome
        self.response = response


class BodyBudget:
    """Bytes of webhook bodies this process holds at once (one event loop: no lock needed)."""

    def __init__(self) -> None:
        self.held = 0

    def take(self, size: int, limit: int) -> None:
        if self.held + size > limit:
            raise _BodyRefused(
                "busy", _problem(503, "too many deliveries at once; retry later", _CLOSE)
            )
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


#: The process's budget (``WEBHOOK_BODY_BUDGET_BYTES``).
BUDGET = BodyBudget()


async def read_body(request: Request, settings: Settings, budget: BodyBudget) -> bytearray:
    """The request body, read chunk by chunk with the size cap and the budget enforced as it
    arrives (never more than one chunk past either). The caller gives back ``len(body)`` to
    ``budget`` when done. Raises :class:`_BodyRefused` with the answer to give."""
    limit = settings.webhook_max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyRefused("too_large", _too_large(int(declared)))
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                budget.give_back(len(body))
                raise _BodyRefused("too_large", _too_large(len(body) + len(chunk)))
            try:
                budget.take(len(chunk), settings.webhook_body_budget_bytes)
            except _BodyRefused:
                budget.give_back(len(body))
                log.warning("webhook.busy", held=budget.held, size=len(body) + len(chunk))
                raise
            body += chunk
    except ClientDisconnect:  # the sender hung up mid-body: nothing to answer, nothing lost
        budget.give_back(len(body))
        log.info("webhook.client_disconnected", received=len(body))
        raise _BodyRefused("disconnected", Response(status_code=400, headers=_CLOSE)) from None
    return body


def _too_large(size: int) -> JSONResponse:
    log.warning("webhook.too_large", size_at_least=size)
    # Close the connection: whatever the sender still sends is not read.
    return _problem(413, "body too large", _CLOSE)


async def receive(request: Request) -> Response:
    """Receive signed webhook events, queue them, and answer 200 at once.

    The hot path of the web tier (Meta sends up to 1,000 messages a second per number), so it
    is a plain Starlette route: it reads the settings, Redis client and publisher from
    ``app.state`` instead of going through FastAPI's dependency solving, which cost more than
    the rest of the request in the webhook benchmark (tests/bench/README.md).
    """
    started = time.perf_counter()
    state = request.app.state
    settings: Settings = state.settings
    try:
        body = await read_body(request, settings, BUDGET)
    except _BodyRefused as refused:
        _count(refused.outcome)
        WEBHOOK_LATENCY.observe(time.perf_counter() - started)
        return refused.response
    try:
        return await _receive(
            request, bytes(body), settings, state.redis, state.publisher, state.ingest
        )
    finally:
        BUDGET.give_back(len(body))
        WEBHOOK_LATENCY.observe(time.perf_counter() - started)


async def _receive(
    request: Request,
    body: bytes,
    settings: Settings,
    redis: Redis,
    publisher: TaskPublisher,
    ingest: IngestStore,
) -> Response:
    header = request.headers.get(SIGNATURE_HEADER)
    app_secret = settings.meta_app_secret
    if app_secret is None or not verify(body, header, app_secret.get_secret_value()):
        _count("bad_signature")
        log.warning("webhook.bad_signature", header_present=header is not None, size=len(body))
        return _problem(401, "invalid or missing X-Hub-Signature-256")

    try:
        delivery = parse_delivery(
            body, settings.phone_number_id, max_events=settings.webhook_max_events
        )
    except PayloadError as exc:
        _count("malformed")
        log.warning("webhook.malformed", reason=exc.reason, size=len(body))
        return _problem(exc.status_code, exc.reason)

    if delivery.object is not None and delivery.object != WHATSAPP_OBJECT:
        _count("ignored")
        log.info("webhook.ignored_object", object=delivery.object[:64])
        return JSONResponse({"status": "ok"})
    if delivery.foreign:
        log.info(
            "webhook.foreign_phone_number_id",
            phone_number_ids=delivery.foreign,
            ours=settings.phone_number_id,
        )
    if delivery.other_fields:
        for name in delivery.other_fields:
            WEBHOOK_CHANGES_IGNORED.labels(field=name).inc()
        log.info("webhook.changes_ignored", fields=sorted(set(delivery.other_fields)))

    # The text goes to the database; the queue gets the wamid (module doc, step 5).
    rows = [(m.wamid, MESSAGE, event_json(m)) for m in delivery.messages]
    rows += [(e.wamid, ECHO, event_json(e)) for e in delivery.echoes]
    try:
        stored = await ingest.put_inbox(rows)
    except Exception as exc:
        return _unavailable("store_inbox", exc)
    # Stored now, yet claimed already: a redelivery of a message handled before (delete the row
    # again) or of one still queued (the worker needs the row): the claim tells which.
    restored: list[tuple[str, str]] = []

    queued = duplicates = 0
    for msg in delivery.messages:
        try:
            task_id = await enqueue_message_once(msg, publisher, dedup_redis=redis)
        except Exception as exc:
            return _unavailable("enqueue_message", exc)
        if task_id is None:
            duplicates += 1
            if msg.wamid in stored:
                restored.append((msg.phone_number_id, msg.wamid))
            log.info("webhook.duplicate", wamid=msg.wamid)
            continue
        queued += 1
        MESSAGES_RECEIVED.labels(kind=msg.kind).inc()
        # DEBUG: at Meta's throughput a line per message costs more than the rest of the request
        # (released_webhook_requests_total counts them; the worker logs each task it runs).
        log.debug("webhook.message_queued", wamid=msg.wamid, kind=msg.kind, task_id=task_id)

    for echo in delivery.echoes:
        try:
            task_id = await enqueue_echo_once(echo, publisher, dedup_redis=redis)
        except Exception as exc:
            return _unavailable("enqueue_echo", exc)
        if task_id is None:
            duplicates += 1
            if echo.wamid in stored:
                restored.append((echo.phone_number_id, echo.wamid))
            continue
        queued += 1
        log.debug("webhook.echo_queued", wamid=echo.wamid, kind=echo.kind, task_id=task_id)

    for status in delivery.statuses:
        try:
            await enqueue_status(status, publisher)
        except Exception as exc:
            return _unavailable("enqueue_status", exc)
        queued += 1
        log.debug("webhook.status_queued", wamid=status.wamid, status=status.status)

    if restored:
        try:
            await ingest.drop_inbox(await dedup.finished(redis, restored))
        except Exception as exc:  # the retention purge deletes them anyway
            log.warning("webhook.inbox_not_cleaned", count=len(restored), error=type(exc).__name__)

    if delivery.quarantined:
        try:
            await _quarantine(ingest, delivery)
        except Exception as exc:
            return _unavailable("store_quarantined", exc)

    _count(
        "accepted" if queued
        else "duplicate" if duplicates
        else "quarantined" if delivery.quarantined
        else "ignored"
    )
    return JSONResponse({"status": "ok"})


async def _quarantine(ingest: IngestStore, delivery: Delivery) -> None:
    """Store the quarantined elements (once each), count them and log one line about them."""
    stored = await ingest.put_quarantined(delivery.quarantined)
    for item in delivery.quarantined:
        WEBHOOK_QUARANTINED.labels(element=item.element, cause=item.cause).inc()
    log.warning(
        "webhook.quarantined",
        count=len(delivery.quarantined),
        new=stored,
        queued=delivery.event_count,
        # Where and why, for the first few: paths and reasons never hold values.
        first=[
            {"element": q.element, "cause": q.cause, "path": q.path, "reason": q.reason}
            for q in delivery.quarantined[:5]
        ],
    )


def _unavailable(stage: str, exc: Exception) -> JSONResponse:
    _count("error")
    log.error("webhook.unavailable", stage=stage, error=type(exc).__name__)
    return _problem(503, "temporarily unavailable; retry later")
