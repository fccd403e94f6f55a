"""The periodic check of the outside world, between reconciliation passes.

A pass checks the model, the Meta account and the WABA subscription whenever the spec or an
input changes. What changes *outside* the cluster without any of that (OpenAI shuts a model
down, Meta expires or revokes a token, someone deletes the vector store or unsubscribes the
app) is found by :func:`check_outside`, which the per-agent timer runs every
``RELEASED_CHECK_INTERVAL`` seconds (:func:`due`): the :data:`~.parts.CHECKS` run against the
agent's current inputs, their conditions are written (``Ready`` recomputed), and when one of
them found something only a full pass can rebuild (a deleted vector store, a webhook to
register again) a pass is requested.

Agents that a blocker holds (an invalid spec, a missing Secret) are left alone: their pass
reports what is wrong, and nothing outside is worth checking until it is fixed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from released.agent.validation import InvalidSpec

from .. import status as st
from ..errors import ReleasedError
from .context import Agent
from .inputs import BLOCKER_REASONS, MissingInput, gather
from .parts import CHECKS, Pass
from .references import request_reconcile
from .status_writer import merged_status, update_status

logger = logging.getLogger("whatsapp_operator")

#: agent uid -> ``time.monotonic()`` of its last check (or pass, which checks the same).
_last_checked: dict[str, float] = {}


def mark_checked(uid: str, now: float | None = None) -> None:
    """Record that the agent's outside world was just looked at (by a pass or a check)."""
    _last_checked[uid] = time.monotonic() if now is None else now


def due(uid: str, interval: float, now: float | None = None) -> bool:
    """Whether the agent's last check is ``interval`` seconds old. An agent not seen before
    is due one interval from now: its first pass (create, or resume when the operator starts)
    checks the same things."""
    now = time.monotonic() if now is None else now
    last = _last_checked.setdefault(uid, now)
    return now - last >= interval


def forget(uid: str) -> None:
    """Drop a deleted agent's bookkeeping."""
    _last_checked.pop(uid, None)


async def check_outside(agent: Agent) -> Pass | None:
    """Run the :data:`~.parts.CHECKS` on one agent and write what they found.

    Returns the pass (for tests), or ``None`` when the agent is blocked or gone.
    """
    if agent.deleting or st.ready_reason(agent.status) in BLOCKER_REASONS:
        return None
    if agent.status.get("observedGeneration") != agent.generation:
        return None  # a pass is due (or running): it checks the same
    try:
        inputs = await gather(agent)
    except (InvalidSpec, MissingInput):
        return None  # the next pass reports it
    p = Pass(agent=agent, inputs=inputs, periodic=True)
    mark_checked(agent.uid)
    for check in CHECKS:
        try:
            await check(p)
        except ReleasedError as exc:  # a check that did not expect this: log, go on
            logger.warning("periodic check of %s failed: %s", agent.key, exc)
    outcome = p.outcome
    if outcome.conditions or outcome.fields:

        def mutate(_fresh: dict[str, Any], current: dict[str, Any]) -> dict[str, Any] | None:
            if st.ready_reason(current) in BLOCKER_REASONS:
                return None
            return merged_status(
                current,
                generation=current.get("observedGeneration"),
                conditions=outcome.conditions,
                fields=outcome.fields,
                observed=False,
            )

        await update_status(agent.kube, agent.namespace, agent.name, mutate)
    if p.needs_reconcile:
        await request_reconcile(agent.kube, agent.namespace, agent.name)
    return p
