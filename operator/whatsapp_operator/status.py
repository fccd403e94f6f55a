"""Conditions and Events of a ``WhatsAppAgent``.

Conditions follow the Kubernetes convention: ``type``, ``status`` (``True``/``False``/``Unknown``),
``reason`` (CamelCase), ``message`` (for people), ``lastTransitionTime`` (changes only when
``status`` changes) and ``observedGeneration``. ``Ready`` summarises the parts:

- ``WorkloadsReady``     the Deployments have rolled to the current template and are available;
- ``KnowledgeReady``     the OpenAI vector store holds the current FAQs;
- ``WebhookRegistered``  Meta's callback override is set (``True``/``NotRequested`` when the
                         spec does not ask for it);
- ``CredentialsRotated`` the operator-owned credentials are within their rotation interval;
- ``ModelAvailable``     OpenAI serves ``spec.assistant.model`` (``True`` with reason
                         ``ShutdownAnnounced`` ahead of an announced shutdown);
- ``MetaAccountHealthy`` Meta accepts the agent's token for its phone number (no token,
                         permission or policy problem);
- ``WabaSubscribed``     the Meta app is subscribed to ``spec.businessAccountId`` (``Unknown``,
                         not blocking, without one).

A spec that cannot be reconciled at all (``InvalidSpec``, ``DatabaseNotConfigured``) sets
``Ready=False`` with that reason directly. Nothing here ever holds a secret: every message goes
through :func:`errors.redact`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import kopf

from .errors import redact

READY = "Ready"
WORKLOADS_READY = "WorkloadsReady"
KNOWLEDGE_READY = "KnowledgeReady"
WEBHOOK_REGISTERED = "WebhookRegistered"
CREDENTIALS_ROTATED = "CredentialsRotated"
MODEL_AVAILABLE = "ModelAvailable"
META_ACCOUNT_HEALTHY = "MetaAccountHealthy"
WABA_SUBSCRIBED = "WabaSubscribed"

#: The parts that ``Ready`` summarises, in the order their reasons win: a refused Meta token
#: explains a failed webhook registration, so the account comes before the webhook.
PARTS: tuple[str, ...] = (
    WORKLOADS_READY,
    KNOWLEDGE_READY,
    MODEL_AVAILABLE,
    META_ACCOUNT_HEALTHY,
    WABA_SUBSCRIBED,
    WEBHOOK_REGISTERED,
    CREDENTIALS_ROTATED,
)
CONDITION_TYPES: tuple[str, ...] = (READY, *PARTS)

#: Reasons of a part that is not ``True`` yet leaves the agent serving (``Ready`` stays
#: ``True``): a rotation under way; a subscription the operator cannot check without
#: ``spec.businessAccountId``.
NON_BLOCKING_REASONS: frozenset[str] = frozenset({"RotationInProgress", "BusinessAccountIdNotSet"})

MAX_MESSAGE = 1000


def now_iso(now: dt.datetime | None = None) -> str:
    """RFC 3339 UTC timestamp with second precision, as Kubernetes writes them."""
    now = now or dt.datetime.now(dt.UTC)
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    """What a handler found about one part; ``to_dict`` adds the bookkeeping fields."""

    type: str
    status: str
    reason: str
    message: str = ""

    @classmethod
    def true(cls, type_: str, reason: str, message: str = "") -> Condition:
        return cls(type_, "True", reason, message)

    @classmethod
    def false(cls, type_: str, reason: str, message: str = "") -> Condition:
        return cls(type_, "False", reason, message)

    @classmethod
    def unknown(cls, type_: str, reason: str, message: str = "") -> Condition:
        return cls(type_, "Unknown", reason, message)


def _find(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    for cond in conditions:
        if cond.get("type") == type_:
            return cond
    return None


def get_condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition ``type_`` of a status dict, if present."""
    return _find((status or {}).get("conditions") or [], type_)


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    cond: Condition,
    generation: int | None,
    *,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """A new list with ``cond`` set; ``lastTransitionTime`` kept unless ``status`` changed."""
    old = _find(conditions, cond.type)
    transition = (
        str(old["lastTransitionTime"])
        if old is not None and old.get("status") == cond.status and old.get("lastTransitionTime")
        else now_iso(now)
    )
    new: dict[str, Any] = {
        "type": cond.type,
        "status": cond.status,
        "reason": cond.reason,
        "message": redact(cond.message)[:MAX_MESSAGE],
        "lastTransitionTime": transition,
    }
    if generation is not None:
        new["observedGeneration"] = int(generation)
    result = [dict(c) for c in conditions if c.get("type") != cond.type]
    result.append(new)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    result.sort(key=lambda c: order.get(str(c.get("type")), len(order)))
    return result


def summarize(
    conditions: Sequence[Mapping[str, Any]],
    *,
    blocker: Condition | None = None,
) -> Condition:
    """The ``Ready`` condition that the parts (or a ``blocker``) imply."""
    if blocker is not None:
        return Condition.false(READY, blocker.reason, blocker.message)
    for part in PARTS:
        cond = _find(conditions, part)
        if cond is None:
            return Condition.unknown(READY, "Reconciling", f"{part} not yet known")
        if cond.get("status") == "True":
            continue
        if cond.get("reason") in NON_BLOCKING_REASONS:
            continue
        status = "False" if cond.get("status") == "False" else "Unknown"
        reason = str(cond.get("reason") or "NotReady")
        return Condition(READY, status, reason, f"{part}: {cond.get('message') or reason}")
    return Condition.true(
        READY, "Ready", "the workloads, knowledge, model, Meta account and webhook are ready"
    )


def apply_conditions(
    current: Sequence[Mapping[str, Any]],
    updates: Iterable[Condition],
    generation: int | None,
    *,
    blocker: Condition | None = None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Set ``updates`` on ``current`` and recompute ``Ready`` (with ``blocker`` if given)."""
    conditions = [dict(c) for c in current]
    for cond in updates:
        conditions = set_condition(conditions, cond, generation, now=now)
    ready = summarize(conditions, blocker=blocker)
    return set_condition(conditions, ready, generation, now=now)


def is_ready(status: Mapping[str, Any] | None) -> bool:
    cond = get_condition(status, READY)
    return cond is not None and cond.get("status") == "True"


def ready_reason(status: Mapping[str, Any] | None) -> str:
    cond = get_condition(status, READY)
    return str(cond.get("reason", "")) if cond else ""


# ---------------------------------------------------------------------------------------------
# Events


class Events(Protocol):
    """Where the Events about one agent go (kopf in the operator, a list in unit tests)."""

    def info(self, reason: str, message: str) -> None:
        """A ``Normal`` Event."""

    def warn(self, reason: str, message: str) -> None:
        """A ``Warning`` Event."""


@dataclass(frozen=True)
class KopfEvents:
    """Events on the agent ``body``, posted by kopf; every message is redacted and cut."""

    body: Any

    def info(self, reason: str, message: str) -> None:
        kopf.info(self.body, reason=reason, message=redact(message)[:MAX_MESSAGE])

    def warn(self, reason: str, message: str) -> None:
        kopf.warn(self.body, reason=reason, message=redact(message)[:MAX_MESSAGE])
