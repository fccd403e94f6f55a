"""Meta's webhook: the verification handshake (GET) and signed event deliveries (POST).

``GET /webhook``: Meta calls it with ``hub.mode=subscribe``, ``hub.verify_token`` and
``hub.challenge`` when the callback URL is set; the challenge is echoed (text/plain, 200) only
when the token matches ``META_VERIFY_TOKEN`` (constant-time comparison), else 403.

``POST /webhook``, in order, answering at once (the worker does the slow part):

1. ``X-Hub-Signature-256`` is checked over the raw body with ``META_APP_SECRET``: 401 and
   nothing parsed, stored or queued when it is missing or wrong.
2. The body is parsed: 400 when it is not a JSON object, 422 when it is not shaped like a
   webhook payload; the response and the log line give the reason (field paths, never values).
3. Events addressed to another phone number id are acknowledged and ignored, with a log line.
4. Each message is de-duplicated by wamid in Redis (``bot.dedup``) and, when new, queued as
   ``bot.tasks.process_message`` (one atomic Lua step when the broker is the same Redis, see
   ``bot.queue.enqueue_message_once``); each status is queued as ``bot.tasks.record_status``.
5. ``200 {"status": "ok"}``. If Redis or the broker fails, 503: Meta redelivers later, and no
   wamid stays claimed for a message that was not queued, so the redelivery is processed.

Every request counts once in ``released_webhook_requests_total{outcome}``: ``accepted`` when
something was queued, else ``duplicate`` when only redeliveries came, else ``ignored``.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from redis.asyncio import Redis
from starlette.requests import ClientDisconnect

from bot.api.deps import SettingsDep
from bot.core.config import Settings
from bot.core.metrics import MESSAGES_RECEIVED, WEBHOOK_LATENCY, WEBHOOK_REQUESTS
from bot.queue import TaskPublisher, enqueue_message_once, enqueue_status
from bot.whatsapp.payload import WHATSAPP_OBJECT, PayloadError, extract_events, parse_payload
from bot.whatsapp.signature import SIGNATURE_HEADER, verify

log = structlog.get_logger(__name__)
router = APIRouter(tags=["webhook"])

#: Meta's payloads are a few KiB; anything far larger is refused before it is read.
MAX_BODY_BYTES = 1024 * 1024


def _count(outcome: str) -> None:
    WEBHOOK_REQUESTS.labels(outcome=outcome).inc()


def _problem(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code)


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
        return PlainTextResponse(challenge)
    _count("verify_failed")
    log.warning(
        "webhook.verify_failed",
        mode=mode,
        token_present=token is not None,
        challenge_present=challenge is not None,
    )
    return PlainTextResponse("Forbidden", status_code=403)


async def receive(request: Request) -> Response:
    """Receive signed webhook events, queue them, and answer 200 at once.

    The hot path of the web tier (Meta sends up to 1,000 messages a second per number), so it
    is a plain Starlette route: it reads the settings, Redis client and publisher from
    ``app.state`` instead of going through FastAPI's dependency solving, which cost more than
    the rest of the request in the webhook benchmark (tests/bench/README.md).
    """
    started = time.perf_counter()
    state = request.app.state
    try:
        return await _receive(request, state.settings, state.redis, state.publisher)
    finally:
        WEBHOOK_LATENCY.observe(time.perf_counter() - started)


async def _receive(
    request: Request, settings: Settings, redis: Redis, publisher: TaskPublisher
) -> Response:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        _count("malformed")
        log.warning("webhook.too_large", content_length=int(declared))
        return _problem(413, "body too large")
    try:
        body = await request.body()
    except ClientDisconnect:  # the sender hung up mid-body: nothing to answer, nothing lost
        _count("malformed")
        log.info("webhook.client_disconnected")
        return Response(status_code=400)
    if len(body) > MAX_BODY_BYTES:
        _count("malformed")
        log.warning("webhook.too_large", content_length=len(body))
        return _problem(413, "body too large")

    header = request.headers.get(SIGNATURE_HEADER)
    if not verify(body, header, settings.meta_app_secret.get_secret_value()):
        _count("bad_signature")
        log.warning("webhook.bad_signature", header_present=header is not None, size=len(body))
        return _problem(401, "invalid or missing X-Hub-Signature-256")

    try:
        payload = parse_payload(body)
        messages, statuses, foreign = extract_events(payload, settings.phone_number_id)
    except PayloadError as exc:
        _count("malformed")
        log.warning("webhook.malformed", reason=exc.reason, size=len(body))
        return _problem(exc.status_code, exc.reason)
    except ValidationError as exc:
        reason = "payload has invalid values: " + "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)[:5]
        )
        _count("malformed")
        log.warning("webhook.malformed", reason=reason, size=len(body))
        return _problem(422, reason)

    if payload.object != WHATSAPP_OBJECT:
        _count("ignored")
        log.info("webhook.ignored_object", object=payload.object)
        return JSONResponse({"status": "ok"})
    if foreign:
        log.info(
            "webhook.foreign_phone_number_id",
            phone_number_ids=foreign,
            ours=settings.phone_number_id,
        )

    queued = duplicates = 0
    for msg in messages:
        try:
            task_id = await enqueue_message_once(msg, publisher, dedup_redis=redis)
        except Exception as exc:
            return _unavailable("enqueue_message", exc)
        if task_id is None:
            duplicates += 1
            log.info("webhook.duplicate", wamid=msg.wamid)
            continue
        queued += 1
        MESSAGES_RECEIVED.labels(kind=msg.kind).inc()
        # DEBUG: at Meta's throughput a line per message costs more than the rest of the request
        # (released_webhook_requests_total counts them; the worker logs each task it runs).
        log.debug("webhook.message_queued", wamid=msg.wamid, kind=msg.kind, task_id=task_id)

    for status in statuses:
        try:
            await enqueue_status(status, publisher)
        except Exception as exc:
            return _unavailable("enqueue_status", exc)
        queued += 1
        log.debug("webhook.status_queued", wamid=status.wamid, status=status.status)

    _count("accepted" if queued else "duplicate" if duplicates else "ignored")
    return JSONResponse({"status": "ok"})


def _unavailable(stage: str, exc: Exception) -> JSONResponse:
    _count("error")
    log.error("webhook.unavailable", stage=stage, error=type(exc).__name__)
    return _problem(503, "temporarily unavailable; retry later")
