"""The Celery application and the worker's tasks, run by ``released-worker`` (:mod:`bot.worker`).

Tasks (published by name by the web tier, see ``bot.queue``; one JSON argument each):

- ``bot.tasks.process_message(payload, user_slot=False)``: an ``InboxRef`` (the wamid of the
  message the web tier stored in the database's inbox, so that no text travels through Redis;
  a whole ``InboundMessage`` is accepted too); answer it (``bot.service``). The inbox row is
  deleted once the message is answered, not to be answered or failed for good. A sender over
  their per-user rate gets a reserved slot and the task is published again for that moment
  (same id, same retry count, ``user_slot=True``): it holds no worker while it waits and spends
  none of its retries.
- ``bot.tasks.record_status(payload)``: a ``StatusUpdate``; store it on the sent message.
- ``bot.tasks.process_echo(payload)``: an ``InboxRef`` of an ``EchoMessage`` (the business
  wrote from the WhatsApp Business app); store it in the user's history.
- ``bot.tasks.notify_handover(payload)``: a conversation was handed to a person (``bot.handover``):
  POST the signed notification to ``HANDOVER_NOTIFY_URL``, retried with backoff; queued by the
  worker that handed over, never in the way of the answer.
- ``bot.tasks.send_staff_reply({"message": id})``: send a reply a person wrote through the
  admin API (stored pending by the web tier, ``bot.admin``).
- ``bot.tasks.check_meta_account()``: while Meta refuses the agent's account, probe it; when it
  works again queue the held messages again; record those whose 24-hour window closed as
  failed (``bot.account``). It schedules itself every ``META_HEALTH_PROBE_SECONDS`` while
  something is held, and every worker queues it every 5 minutes as a safety net (one run per
  period for all the agent's workers).

The retention purge is not a task: ``released purge`` runs it (a Kubernetes CronJob, so no
process waits between runs and it runs while the agent is suspended).

Reliability: tasks are acknowledged late and rejected when their worker dies
(``task_acks_late``, ``task_reject_on_worker_lost``), a worker prefetches no more tasks than it
has slots, and Redis redelivers a task not acknowledged within ``CELERY_VISIBILITY_TIMEOUT``.
Transient failures of either API (429, 5xx, timeouts) are retried with exponential backoff and full
jitter, honoring ``Retry-After``, up to ``MAX_TASK_RETRIES``; the model gets
``OPENAI_MAX_RETRIES`` of them, after which the bot answers from the FAQs. The last attempt
never raises a retry: it answers with a fallback or records the send as failed.

Concurrency: the worker runs Celery's ``threads`` pool (``--concurrency`` tasks at once in one
process; the work is waiting on OpenAI, Meta, Redis and the database). The tasks are sync
functions that run the async service on the process's one event loop, in a thread of its own
(``bot.loop``); the database engine, HTTP clients and Redis client are built on that loop, shared
by every task and never by another loop, and closed at worker shutdown. A task's coroutine is
cancelled after ``TASK_TIMEOUT_FRACTION`` of ``CELERY_VISIBILITY_TIMEOUT`` (Redis would deliver
it again then anyway), so a hung call cannot hold a slot forever.

Liveness: with ``WORKER_HEARTBEAT_FILE`` set, the consumer touches that file every
``HEARTBEAT_SECONDS`` through the event loop, so a fresh file proves that both the consumer and
the loop are alive (the pod's probes check its age).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Coroutine
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery, Task, bootsteps
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
)
from prometheus_client import start_http_server
from pydantic import ValidationError

from bot import service
from bot.core.config import WORKER_SECRETS, MissingSecretsError, Settings, get_settings
from bot.core.metrics import HANDOVER_NOTIFICATIONS, MESSAGES_HELD, TASKS, metrics_registry
from bot.loop import LoopThread
from bot.queue import inbox_ref
from bot.storage import inbox
from bot.storage import repository as repo
from bot.storage.db import dispose_engines, session_scope
from bot.storage.repository import StatusOutcome
from bot.whatsapp.events import EchoMessage, InboundMessage, InboxRef, StatusUpdate

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Backoff: the n-th retry waits a random time in [0.5, 1] x BASE x 2**n seconds, at most CAP.
RETRY_BASE_SECONDS = 2.0
RETRY_CAP_SECONDS = 300.0
#: A status may arrive before the worker that sent the message has stored its wamid.
STATUS_UNKNOWN_RETRIES = 3
STATUS_UNKNOWN_DELAY = 5.0
#: A task's coroutine is cancelled after this share of ``CELERY_VISIBILITY_TIMEOUT``.
TASK_TIMEOUT_FRACTION = 0.8
#: How often the consumer refreshes ``WORKER_HEARTBEAT_FILE``; the probes allow 60 s.
HEARTBEAT_SECONDS = 10.0
#: How often each worker queues ``check_meta_account`` (at most once per period per agent).
ACCOUNT_SWEEP_SECONDS = 300.0


def make_celery(settings: Settings | None = None) -> Celery:
    """The Celery app configured from ``settings``."""
    settings = settings or get_settings()
    celery_app = Celery("released", set_as_current=False)
    celery_app.conf.update(
        broker_url=settings.broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Tasks wait on I/O: threads in one process, sharing one event loop (module doc).
        worker_pool="threads",
        broker_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout,
            # A worker killed mid-task (SIGKILL, OOM, node loss) leaves its task unacknowledged;
            # sweep for such tasks often enough that they come back about one visibility
            # timeout later, not kombu's default of every ~100 s on top of it.
            "unacked_restore_interval": max(1, min(10, settings.celery_visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
    )
    return celery_app


app = make_celery()


@setup_logging.connect  # type: ignore[untyped-decorator]
def _setup_logging(**_: Any) -> None:
    """Use the bot's structured, redacting logging instead of Celery's handlers."""
    from bot.core.logging import configure_logging

    configure_logging(get_settings())


# -- one event loop (and one set of clients) per worker process -----------------------------

#: The process's event loop (``bot.loop``); every task's async code runs on it.
_io = LoopThread()
#: The clients of that loop; read and written on the loop's thread only.
_rt: service.Runtime | None = None


def run_async(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` to completion on this worker process's event loop (from a task's thread).

    The coroutine is cancelled (``TimeoutError``) after ``timeout`` seconds, by default
    ``TASK_TIMEOUT_FRACTION`` of ``CELERY_VISIBILITY_TIMEOUT``.
    """
    if timeout is None:
        timeout = get_settings().celery_visibility_timeout * TASK_TIMEOUT_FRACTION
    return _io.run(coro, timeout)


async def _runtime(settings: Settings) -> service.Runtime:
    global _rt
    rt = _rt
    if rt is not None and rt.settings is settings:
        return rt
    if rt is not None:  # settings changed (tests): rebuild the clients
        await rt.aclose()
    _rt = service.create_runtime(settings)
    _rt.on_handover = partial(_queue_notification, settings)
    return _rt


async def _queue_notification(settings: Settings, handover: service.Handover) -> None:
    """Queue the notification of a handover (``notify_handover``), off the event loop."""
    if settings.handover_notify_url is None:
        return
    await asyncio.to_thread(notify_handover.apply_async, args=[_handover_payload(handover)])


def _handover_payload(handover: service.Handover) -> dict[str, Any]:
    return {
        "id": handover.delivery_id,
        "conversation": handover.conversation_id,
        "reason": handover.reason,
        "heldUntil": handover.held_until.isoformat(),
    }


async def _close_runtime() -> None:
    global _rt
    rt, _rt = _rt, None
    if rt is not None:
        await rt.aclose()
    await dispose_engines()


def shutdown() -> None:
    """Close this process's clients, engine and event loop (a later task starts them again)."""
    global _rt
    if not _io.started:
        _rt = None  # inherited through a fork: those clients belong to the parent's loop
        return
    _io.stop(_close_runtime)


def _is_ours(worker: Any) -> bool:
    """Whether a ``worker_init`` signal comes from a worker of this app (another Celery app in
    the same process, a test's for instance, is none of our business)."""
    return getattr(worker, "app", app) is app


@worker_init.connect  # type: ignore[untyped-decorator]
def _require_worker_secrets(sender: Any = None, **_: Any) -> None:
    """A worker without the Graph API token or the OpenAI key refuses to start (no defaults).

    SystemExit, because Celery logs and swallows an ordinary exception of a signal handler.
    """
    if not _is_ours(sender):
        return
    try:
        get_settings().require(*WORKER_SECRETS)
    except MissingSecretsError as exc:
        raise SystemExit(f"celery worker: {exc}") from None


@worker_init.connect  # type: ignore[untyped-decorator]
def _serve_worker_metrics(sender: Any = None, **_: Any) -> None:
    """Serve the worker's metrics (aggregated over its pool processes) for Prometheus."""
    if not _is_ours(sender):
        return
    settings = get_settings()
    if not settings.worker_metrics_port:
        return
    try:
        start_http_server(settings.worker_metrics_port, settings.worker_metrics_host,
                          registry=metrics_registry())
    except OSError as exc:  # the port is taken: answering messages matters more than metrics
        log.warning("worker metrics not served on port %s: %s", settings.worker_metrics_port,
                    exc.strerror)
    else:
        log.info("worker metrics on port %s", settings.worker_metrics_port)


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown_worker_process(**_: Any) -> None:
    """A prefork child ends (when someone runs the worker with ``--pool=prefork``)."""
    shutdown()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown_worker(sender: Any = None, **_: Any) -> None:
    """The worker ends (threads or solo pool: the tasks ran in this process)."""
    if _is_ours(sender):
        shutdown()


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError as exc:  # the probe will say so; the worker keeps answering
        log.warning("cannot refresh the heartbeat file %s: %s", path, exc.strerror)


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Refresh ``WORKER_HEARTBEAT_FILE`` every ``HEARTBEAT_SECONDS`` from the consumer's timer,
    through the event loop: the file stays fresh only while both run (the module doc)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        path = get_settings().worker_heartbeat_file
        if path is None:
            return
        path = Path(path)
        _touch(path)

        def beat() -> None:
            _io.call_soon(lambda: _touch(path))

        self.tref = parent.timer.call_repeatedly(HEARTBEAT_SECONDS, beat, priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


class AccountSweep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Queue ``check_meta_account`` every ``ACCOUNT_SWEEP_SECONDS`` (Celery beat's job before):
    the safety net of the checks that schedule themselves while messages are held."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        def sweep() -> None:  # off the consumer's thread: it talks to Redis
            threading.Thread(target=sweep_account, name="account-sweep", daemon=True).start()

        self.tref = parent.timer.call_repeatedly(ACCOUNT_SWEEP_SECONDS, sweep, priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


app.steps["consumer"].update({Heartbeat, AccountSweep})


# -- retry policy ---------------------------------------------------------------------------


def retry_countdown(
    retries: int,
    retry_after: float | None = None,
    *,
    cap: float = RETRY_CAP_SECONDS,
    base: float = RETRY_BASE_SECONDS,
) -> float:
    """Seconds before retry number ``retries + 1``: exponential with jitter, or the server's
    ``Retry-After`` (plus a little jitter so that workers do not return in lockstep)."""
    if retry_after is not None and retry_after > 0:
        return min(cap, retry_after + random.uniform(0, min(1.0, retry_after / 4)))
    ceiling = min(cap, base * (2 ** max(0, retries)))
    return random.uniform(ceiling / 2, ceiling)


def _cap(settings: Settings) -> float:
    # An ETA/countdown task sits unacknowledged in Redis: keep it under the visibility timeout.
    return min(RETRY_CAP_SECONDS, service.countdown_cap(settings))


#: Marks that a ``check_meta_account`` run is scheduled (until just before it runs), so that
#: only one chain of checks runs.
ACCOUNT_CHECK_KEY = "released:meta-account-check:{}"
#: Marks that a worker queued the periodic safety-net check of this period.
ACCOUNT_SWEEP_KEY = "released:meta-account-sweep:{}"


# -- the inbox --------------------------------------------------------------------------------


def _ref(payload: Any) -> str | None:
    """The inbox wamid of a task's argument; ``None`` for a whole event (earlier versions)."""
    if isinstance(payload, dict) and "inbox" in payload:
        return InboxRef.model_validate(payload).inbox
    return None


async def _stored(
    settings: Settings, ref: str | None, given: InboundMessage | EchoMessage | None
) -> InboundMessage | EchoMessage | None:
    """The task's event: read from the inbox, or (a whole event, from an earlier version)
    stored there first, so that its next runs carry only the wamid."""
    async with session_scope(settings) as session:
        if given is not None:
            await inbox.keep(session, given)
            return given
        assert ref is not None
        return await inbox.load(session, ref)


async def _done_with(
    rt: service.Runtime, msg: InboundMessage, result: service.MessageResult
) -> None:
    """Delete ``msg``'s inbox row once nothing will run for it again: answered, not to be
    answered, failed for good, or a duplicate of a reply already final (a duplicate of one
    being sent leaves the row to the task sending it). A revoke erases the row of the message
    it deletes, as ``bot.service`` erases its text."""
    finished = result.outcome in (
        service.Outcome.REPLIED, service.Outcome.NOT_ANSWERED, service.Outcome.FAILED
    )
    async with session_scope(rt.settings) as session:
        if result.outcome == service.Outcome.DUPLICATE:
            reply = await repo.find_reply(session, msg.wamid)
            finished = reply is not None and reply.status in repo.FINAL_REPLY_STATUSES
        gone = [msg.wamid] if finished else []
        if msg.kind == "revoke" and msg.original_wamid:
            gone.append(msg.original_wamid)
        await inbox.discard(session, gone)
    await service.mark_finished(rt, msg.phone_number_id, gone)


# -- tasks ----------------------------------------------------------------------------------


@app.task(bind=True, name="bot.tasks.process_message", max_retries=None, shared=False)  # type: ignore[untyped-decorator]
def process_message(
    self: Task, payload: dict[str, Any], user_slot: bool = False
) -> dict[str, Any]:
    """Answer one inbound message (see ``bot.service.handle_message``)."""
    settings = get_settings()
    try:
        ref = _ref(payload)
        given = None if ref is not None else InboundMessage.model_validate(payload)
    except ValidationError as exc:
        TASKS.labels(task="process_message", outcome="failure").inc()
        log.error("dropping an invalid message payload: %s", exc.errors(include_input=False))
        return {"outcome": "invalid"}
    wamid = ref if ref is not None else given.wamid if given is not None else ""
    later = [inbox_ref(wamid)]  # what a retry or a deferred run carries: no text
    retries = int(self.request.retries or 0)
    # Read here: Celery's request is the task thread's, and the coroutine runs on the loop's.
    task_id = self.request.id
    final = retries >= settings.max_task_retries
    model_fallback = final or retries >= settings.openai_max_retries

    async def run() -> service.MessageResult | None:
        rt = await _runtime(settings)
        msg = await _stored(settings, ref, given)
        if not isinstance(msg, InboundMessage):
            return None
        result = await service.handle_message(
            msg,
            rt,
            model_fallback=model_fallback,
            final_attempt=final,
            claim_id=task_id,
            # A message takes one turn of its sender's bucket, on its first run.
            user_slot=user_slot or retries > 0,
        )
        await _done_with(rt, msg, result)
        return result

    try:
        result = run_async(run())
    except service.Deferred as exc:
        # The same task (id, retry count) again when the user's reserved slot comes.
        self.apply_async(
            args=later,
            kwargs={"user_slot": True},
            countdown=min(exc.seconds, _cap(settings)),
            task_id=task_id,
            retries=retries,
        )
        TASKS.labels(task="process_message", outcome="deferred").inc()
        log.info("message %s: %s", wamid, exc)
        return {"outcome": "deferred", "seconds": exc.seconds}
    except service.RetryLater as exc:
        countdown = retry_countdown(retries, exc.retry_after, cap=_cap(settings))
        TASKS.labels(task="process_message", outcome="retry").inc()
        log.warning("message %s: %s; retry %d in %.1fs", wamid, exc, retries + 1, countdown)
        raise self.retry(
            args=later, exc=exc, countdown=countdown, max_retries=settings.max_task_retries
        ) from exc
    except Exception as exc:
        # Database or Redis unreachable, a bug...: retry while attempts remain.
        if final:
            TASKS.labels(task="process_message", outcome="failure").inc()
            raise
        countdown = retry_countdown(retries, cap=_cap(settings))
        TASKS.labels(task="process_message", outcome="retry").inc()
        log.warning("message %s: %r; retry %d in %.1fs", wamid, exc, retries + 1, countdown)
        raise self.retry(
            args=later, exc=exc, countdown=countdown, max_retries=settings.max_task_retries
        ) from exc
    if result is None:  # its inbox row is gone: handled already, purged, or deleted by the user
        TASKS.labels(task="process_message", outcome="success").inc()
        log.info("message %s: nothing stored for it any more; nothing to do", wamid)
        return {"outcome": "gone"}
    outcome = "failure" if result.outcome == service.Outcome.FAILED else "success"
    TASKS.labels(task="process_message", outcome=outcome).inc()
    if result.outcome == service.Outcome.HELD:
        schedule_account_check(settings, settings.meta_health_probe_seconds)
    elif result.outcome == service.Outcome.REPLIED:
        _resume_held(settings)
    return {
        "outcome": result.outcome.value,
        "source": result.source,
        "reply_wamid": result.reply_wamid,
        "error_code": result.error_code,
        "reason": result.reason,
    }


@app.task(bind=True, name="bot.tasks.process_echo", max_retries=None, shared=False)  # type: ignore[untyped-decorator]
def process_echo(self: Task, payload: dict[str, Any]) -> str:
    """Store an echo (a message the business sent itself) in the user's conversation."""
    settings = get_settings()
    try:
        ref = _ref(payload)
        given = None if ref is not None else EchoMessage.model_validate(payload)
    except ValidationError as exc:
        TASKS.labels(task="process_echo", outcome="failure").inc()
        log.error("dropping an invalid echo payload: %s", exc.errors(include_input=False))
        return "invalid"
    retries = int(self.request.retries or 0)

    async def run() -> bool | None:
        echo = await _stored(settings, ref, given)
        if not isinstance(echo, EchoMessage):
            return None
        stored = await service.record_echo(echo, settings)
        async with session_scope(settings) as session:
            await inbox.discard(session, [echo.wamid])
        await service.mark_finished(await _runtime(settings), echo.phone_number_id, [echo.wamid])
        return stored

    try:
        stored = run_async(run())
    except Exception as exc:
        if retries >= settings.max_task_retries:
            TASKS.labels(task="process_echo", outcome="failure").inc()
            raise
        TASKS.labels(task="process_echo", outcome="retry").inc()
        wamid = ref if ref is not None else given.wamid if given is not None else ""
        raise self.retry(
            args=[inbox_ref(wamid)], exc=exc, countdown=retry_countdown(retries, cap=_cap(settings))
        ) from exc
    TASKS.labels(task="process_echo", outcome="success").inc()
    if stored is None:
        return "gone"
    return "stored" if stored else "duplicate"


def schedule_account_check(settings: Settings, countdown: float) -> bool:
    """Queue ``check_meta_account`` in ``countdown`` seconds unless one is already queued."""

    async def claim() -> bool:
        # The claim lapses just before the check runs, so the check can schedule the next.
        rt = await _runtime(settings)
        key = ACCOUNT_CHECK_KEY.format(settings.phone_number_id)
        ttl_ms = max(500, int(countdown * 1000) - 500)
        return bool(await rt.redis.set(key, "1", nx=True, px=ttl_ms))

    try:
        if not run_async(claim()):
            return False
        check_meta_account.apply_async(countdown=min(countdown, _cap(settings)))
    except Exception as exc:  # the sweep every 5 minutes still comes
        log.warning("cannot schedule the Meta account check: %r", exc)
        return False
    return True


def sweep_account() -> bool:
    """The periodic safety net: queue ``check_meta_account`` unless another worker of the
    agent did so this period (``AccountSweep`` calls it every ``ACCOUNT_SWEEP_SECONDS``)."""
    settings = get_settings()

    async def claim() -> bool:
        rt = await _runtime(settings)
        key = ACCOUNT_SWEEP_KEY.format(settings.phone_number_id)
        ttl_ms = int(ACCOUNT_SWEEP_SECONDS * 1000) - 5000
        return bool(await rt.redis.set(key, "1", nx=True, px=ttl_ms))

    try:
        if not run_async(claim(), timeout=60.0):
            return False
        check_meta_account.apply_async()
    except Exception as exc:  # the next period tries again
        log.warning("cannot queue the periodic Meta account check: %r", exc)
        return False
    return True


def _resume_held(settings: Settings) -> int:
    """Queue the held messages again (the account works: a send just succeeded); those whose
    24-hour window closed are recorded as failed instead. Returns how many were queued."""

    async def held() -> list[tuple[str, InboundMessage]]:
        rt = await _runtime(settings)
        if not await rt.account.any_held():
            return []
        await service.expire_held(rt)
        return await rt.account.peek_held()

    async def drop(key: str) -> None:
        rt = await _runtime(settings)
        await rt.account.drop_held(key)

    try:
        waiting = run_async(held())
        for key, msg in waiting:
            # The message waits in the inbox (its text never in Redis).
            process_message.apply_async(args=[inbox_ref(msg.wamid)])
            run_async(drop(key))
            MESSAGES_HELD.labels(outcome="resumed").inc()
    except Exception as exc:  # they stay held: the next success or check tries again
        log.warning("cannot queue the held messages again: %r", exc)
        return 0
    if waiting:
        log.warning("queued %d held messages again", len(waiting))
    return len(waiting)


@app.task(name="bot.tasks.check_meta_account", shared=False)  # type: ignore[untyped-decorator]
def check_meta_account() -> dict[str, Any]:
    """Probe the account while it is refused; resume or expire held messages (module doc)."""
    settings = get_settings()

    async def check() -> tuple[bool, int, int]:
        rt = await _runtime(settings)
        healthy = True
        if await rt.account.problem() is not None:
            healthy = await service.probe_account(rt)
        expired = await service.expire_held(rt)
        return healthy, expired, await rt.account.held_count()

    try:
        healthy, expired, held = run_async(check())
    except Exception:
        TASKS.labels(task="check_meta_account", outcome="failure").inc()
        raise
    resumed = _resume_held(settings) if healthy and held else 0
    if not healthy and held:
        schedule_account_check(settings, settings.meta_health_probe_seconds)
    TASKS.labels(task="check_meta_account", outcome="success").inc()
    return {"healthy": healthy, "expired": expired, "resumed": resumed, "held": held - resumed}


@app.task(bind=True, name="bot.tasks.record_status", max_retries=None, shared=False)  # type: ignore[untyped-decorator]
def record_status(self: Task, payload: dict[str, Any]) -> str:
    """Store a delivery status (sent, delivered, read, failed) on the message it is about."""
    settings = get_settings()
    try:
        update = StatusUpdate.model_validate(payload)
    except ValidationError as exc:
        TASKS.labels(task="record_status", outcome="failure").inc()
        log.error("dropping an invalid status payload: %s", exc.errors(include_input=False))
        return "invalid"
    retries = int(self.request.retries or 0)
    # The last try of a status no message of ours has: someone else wrote to the user.
    last_try = retries >= STATUS_UNKNOWN_RETRIES
    try:
        outcome = run_async(
            service.record_status(update, settings, foreign_if_unknown=last_try)
        )
    except Exception as exc:
        if retries >= settings.max_task_retries:
            TASKS.labels(task="record_status", outcome="failure").inc()
            raise
        TASKS.labels(task="record_status", outcome="retry").inc()
        raise self.retry(exc=exc, countdown=retry_countdown(retries, cap=_cap(settings))) from exc
    if outcome == StatusOutcome.UNKNOWN and retries < STATUS_UNKNOWN_RETRIES:
        # The worker that sent this message may not have stored its wamid yet.
        TASKS.labels(task="record_status", outcome="retry").inc()
        raise self.retry(countdown=STATUS_UNKNOWN_DELAY * (retries + 1))
    TASKS.labels(task="record_status", outcome="success").inc()
    return outcome.value



@app.task(bind=True, name="bot.tasks.notify_handover", max_retries=None, shared=False)  # type: ignore[untyped-decorator]
def notify_handover(self: Task, payload: dict[str, Any]) -> str:
    """POST the signed notification of one handover (``bot.service.notify_handover``),
    retried with backoff up to ``MAX_TASK_RETRIES`` while the receiver is unreachable or
    answers 5xx/408/429."""
    settings = get_settings()
    try:
        handover = service.Handover(
            delivery_id=str(payload["id"]),
            conversation_id=int(payload["conversation"]),
            reason=str(payload["reason"]),
            held_until=datetime.fromisoformat(str(payload["heldUntil"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        TASKS.labels(task="notify_handover", outcome="failure").inc()
        log.error("dropping an invalid handover notification payload: %r", exc)
        return "invalid"
    retries = int(self.request.retries or 0)

    async def run() -> str:
        return await service.notify_handover(await _runtime(settings), handover)

    try:
        outcome = run_async(run(), timeout=60.0)
    except Exception as exc:
        retry_after = exc.retry_after if isinstance(exc, service.RetryLater) else None
        if retries >= settings.max_task_retries:
            HANDOVER_NOTIFICATIONS.labels(outcome="failed").inc()
            TASKS.labels(task="notify_handover", outcome="failure").inc()
            log.error("handover notification %s not delivered after %d tries: %s",
                      handover.delivery_id, retries + 1, exc)
            return "failed"
        HANDOVER_NOTIFICATIONS.labels(outcome="retry").inc()
        TASKS.labels(task="notify_handover", outcome="retry").inc()
        countdown = retry_countdown(retries, retry_after, cap=_cap(settings))
        log.warning("handover notification %s: %s; retry %d in %.1fs", handover.delivery_id,
                    exc, retries + 1, countdown)
        raise self.retry(exc=exc, countdown=countdown,
                         max_retries=settings.max_task_retries) from exc
    if outcome == "delivered":
        HANDOVER_NOTIFICATIONS.labels(outcome="delivered").inc()
    elif outcome == "refused":
        HANDOVER_NOTIFICATIONS.labels(outcome="failed").inc()
    TASKS.labels(task="notify_handover", outcome="success").inc()
    return outcome


@app.task(bind=True, name="bot.tasks.send_staff_reply", max_retries=None, shared=False)  # type: ignore[untyped-decorator]
def send_staff_reply(self: Task, payload: dict[str, Any]) -> str:
    """Send a reply a person wrote through the admin API (``bot.service.send_staff_reply``)."""
    settings = get_settings()
    try:
        message_id = int(payload["message"])
    except (KeyError, TypeError, ValueError) as exc:
        TASKS.labels(task="send_staff_reply", outcome="failure").inc()
        log.error("dropping an invalid staff reply payload: %r", exc)
        return "invalid"
    retries = int(self.request.retries or 0)
    final = retries >= settings.max_task_retries
    task_id = self.request.id or f"staff-{message_id}"

    async def run() -> service.MessageResult:
        rt = await _runtime(settings)
        return await service.send_staff_reply(rt, message_id, task_id, final_attempt=final)

    try:
        result = run_async(run())
    except Exception as exc:
        if final:
            TASKS.labels(task="send_staff_reply", outcome="failure").inc()
            raise
        retry_after = exc.retry_after if isinstance(exc, service.RetryLater) else None
        TASKS.labels(task="send_staff_reply", outcome="retry").inc()
        raise self.retry(
            exc=exc, countdown=retry_countdown(retries, retry_after, cap=_cap(settings)),
            max_retries=settings.max_task_retries,
        ) from exc
    outcome = "failure" if result.outcome == service.Outcome.FAILED else "success"
    TASKS.labels(task="send_staff_reply", outcome=outcome).inc()
    return result.outcome.value
