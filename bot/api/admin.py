"""The admin API: people look at conversations, hold them, release them and reply.

Served by the web tier under ``/admin/``; the agent's Ingress routes only ``/webhook``, so it is
reached inside the cluster or with ``kubectl port-forward`` (``released conversations`` is its
client). Every request needs ``Authorization: Bearer ADMIN_TOKEN`` (``ADMIN_TOKEN_PREVIOUS``
too during a rotation; constant-time comparison); without ``ADMIN_TOKEN`` set the whole API
answers 404, as if it did not exist.

- ``GET /admin/conversations?state=held|bot|all&limit=N``: the most recently active first.
- ``GET /admin/conversations/{id}``: one conversation with its stored messages (those within
  ``RETENTION_DAYS``), oldest first.
- ``POST /admin/conversations/{id}/hold`` ``{"seconds": N, "reason": "..."}`` (both
  optional): a person takes over for N seconds (default ``HANDOVER_HOLD_SECONDS``); the bot
  stays silent meanwhile.
- ``POST /admin/conversations/{id}/release``: the bot answers again from now on.
- ``POST /admin/conversations/{id}/reply`` ``{"text": "..."}``: send ``text`` as the business.
  Refused (409) when the user's last message is more than 24 hours old (WhatsApp lets only
  templates through then). The reply is stored like any outbound message, the conversation is
  held (a person is talking) and the worker sends it (``bot.tasks.send_staff_reply``: the web
  tier holds no Graph API token and no message text goes through Redis); the answer waits up
  to :data:`REPLY_WAIT_SECONDS` for the send: 200 with the sent message, 502 when Meta refused
  it (Meta's code and title), 202 while it is still pending.

The database work is in ``bot.admin``, imported on the first admin request so that the
webhook path never loads SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bot.api.deps import PublisherDep, SettingsDep
from bot.core.config import Settings

if TYPE_CHECKING:
    from types import ModuleType

log = structlog.get_logger(__name__)

#: The task that sends a staff reply (``bot.tasks.send_staff_reply``).
SEND_STAFF_REPLY_TASK = "bot.tasks.send_staff_reply"
#: How long ``reply`` waits for the worker to send before answering 202.
REPLY_WAIT_SECONDS = 15.0
_POLL_SECONDS = 0.2


class AdminRefused(Exception):
    """A request without a valid admin token (404 when the API is off, else 401)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _token_ok(settings: Settings, given: str) -> bool:
    accepted = [settings.admin_token, settings.admin_token_previous]
    given_bytes = given.encode("utf-8")
    # Compare against every accepted token, so timing says nothing about which one matched.
    return any(
        [hmac.compare_digest(given_bytes, t.get_secret_value().encode("utf-8"))
         for t in accepted if t is not None]
    )


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """The request carries the admin token (see the module doc)."""
    if settings.admin_token is None:
        raise AdminRefused(404, "Not Found")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or not _token_ok(settings, token.strip()):
        log.warning("admin.unauthorized", path=request.url.path)
        raise AdminRefused(401, "a valid admin token is required (Authorization: Bearer ...)")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def _ops() -> ModuleType:
    """``bot.admin``, loaded on first use (it brings SQLAlchemy and the models)."""
    import bot.admin

    return bot.admin


async def _call(coro: Any) -> JSONResponse:
    from bot.admin import AdminError

    try:
        return JSONResponse(await coro)
    except AdminError as exc:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)


def refused(_: Request, exc: Exception) -> JSONResponse:
    """The exception handler of :class:`AdminRefused`."""
    assert isinstance(exc, AdminRefused)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


class HoldRequest(BaseModel):
    seconds: int | None = Field(default=None, ge=1)
    reason: str | None = Field(default=None, max_length=256)


class ReplyRequest(BaseModel):
    text: str = Field(min_length=1)


@router.get("/conversations")
async def list_conversations(
    settings: SettingsDep,
    state: Literal["held", "bot", "all"] = "all",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    return await _call(_ops().list_conversations(settings, state, limit))


@router.get("/conversations/{conversation_id}")
async def show_conversation(
    settings: SettingsDep,
    conversation_id: int,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> JSONResponse:
    return await _call(_ops().show_conversation(settings, conversation_id, limit))


@router.post("/conversations/{conversation_id}/hold")
async def hold_conversation(
    settings: SettingsDep, conversation_id: int, body: HoldRequest | None = None
) -> JSONResponse:
    body = body or HoldRequest()
    return await _call(
        _ops().hold_conversation(settings, conversation_id, body.seconds, body.reason)
    )


@router.post("/conversations/{conversation_id}/release")
async def release_conversation(settings: SettingsDep, conversation_id: int) -> JSONResponse:
    return await _call(_ops().release_conversation(settings, conversation_id))


@router.post("/conversations/{conversation_id}/reply")
async def reply(
    settings: SettingsDep, publisher: PublisherDep, conversation_id: int, body: ReplyRequest
) -> JSONResponse:
    ops = _ops()
    try:
        message_id = await ops.store_reply(settings, conversation_id, body.text)
    except ops.AdminError as exc:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)
    try:
        await publisher.send_task(
            SEND_STAFF_REPLY_TASK, [{"message": message_id}],
            argsrepr=f"(<staff reply {message_id}>,)",
        )
    except Exception as exc:
        log.error("admin.reply_not_queued", message=message_id, error=type(exc).__name__)
        await ops.fail_reply(settings, message_id, "not queued: the broker did not answer")
        return JSONResponse(
            {"detail": "the reply could not be queued (the broker did not answer); try again"},
            status_code=503,
        )
    deadline = time.monotonic() + REPLY_WAIT_SECONDS
    while True:
        message = await ops.message_state(settings, message_id)
        if message["status"] != "pending":
            break
        if time.monotonic() >= deadline:
            return JSONResponse({"detail": "queued; the worker has not sent it yet",
                                 "message": message}, status_code=202)
        await asyncio.sleep(_POLL_SECONDS)
    if message["status"] == "failed":
        return JSONResponse(
            {"detail": f"Meta refused the reply: {message['errorCode']} {message['errorTitle']}",
             "message": message},
            status_code=502,
        )
    return JSONResponse({"message": message})
