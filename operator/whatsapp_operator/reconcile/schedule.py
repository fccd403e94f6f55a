"""Whether an agent's timer has work to do now, decided from its live body alone.

The per-agent timer (``periodic`` in :mod:`whatsapp_operator.handlers`) wakes every
``RELEASED_TIMER_INTERVAL`` seconds. Most wake-ups find nothing to do: the rollout is done, the
outside world was checked minutes ago, no rotation is due. :func:`work_due` says so from the
body kopf keeps up to date and from the checks' bookkeeping (:mod:`.checks`), without a request,
so that at rest an agent costs a wake-up and nothing more; the timer runs its tick only when
this says yes. It answers yes for:

- a rollout under way (``WorkloadsReady`` not ``True`` after a first pass) or a webhook that
  waits for workloads the status says are ready (:func:`.parts.workloads.webhook_stalled`);
- the outside world's check when due (:func:`.checks.due`);
- the count of held conversations when due (:func:`.checks.held_interval`) and there is
  something to count: the operator provisions databases (a shared PostgreSQL is configured) or
  the spec asks for a handover;
- a credential rotation under way, or due by the status's ``nextRotation``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from .. import rotation as rot
from .. import status as st
from ..config import OperatorSettings
from . import checks
from .parts.workloads import webhook_stalled


def rollout_pending(body: Mapping[str, Any]) -> bool:
    """Whether a first pass ran and ``WorkloadsReady`` is not ``True`` yet."""
    status = body.get("status") or {}
    settled = st.get_condition(status, st.WORKLOADS_READY)
    return bool(status.get("observedGeneration")) and (
        settled is None or settled.get("status") != "True"
    )


def counts_held(spec: Mapping[str, Any], settings: OperatorSettings) -> bool:
    """Whether counting held conversations can say anything for this agent."""
    return settings.postgres_admin_url is not None or spec.get("handover") is not None


def rotation_due(status: Mapping[str, Any], now: dt.datetime) -> bool:
    """Whether a rotation is under way or its time has come, by the status: each pass writes
    ``nextRotation`` from the spec's interval (so this parses no spec on every wake-up)."""
    phase = (status.get("rotation") or {}).get("phase")
    if phase and phase != rot.RotationPhase.IDLE:
        return True
    due = rot.parse_time(status.get("nextRotation"))
    return due is not None and now >= due


def work_due(
    body: Mapping[str, Any],
    settings: OperatorSettings,
    *,
    now: float | None = None,
    wall: dt.datetime | None = None,
) -> bool:
    """Whether the timer's tick has anything to do for this agent now (see the module doc).
    ``now`` is ``time.monotonic()``'s clock (the checks' bookkeeping), ``wall`` UTC time."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    if rollout_pending(body) or webhook_stalled(body):
        return True
    uid = meta.get("uid", "")
    if checks.due(uid, settings.check_interval, now=now):
        return True
    spec = body.get("spec") or {}
    if counts_held(spec, settings) and checks.held_due(
        uid, checks.held_interval(body, settings), now=now, mark=False
    ):
        return True
    return rotation_due(body.get("status") or {}, wall or dt.datetime.now(dt.UTC))
