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

:func:`count_held` is the other periodic look outside: how many conversations a person holds
now (:mod:`whatsapp_operator.handover`; every agent whose database the operator provisioned, as
holds happen without ``spec.handover`` too), written to ``status.handover`` only when it
changed, every ``RELEASED_HANDOVER_COUNT_INTERVAL`` seconds while the spec asks for a handover
or something is held, else once per check interval (:func:`held_interval`, :func:`held_due`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from released.agent.naming import child_names
from released.agent.validation import InvalidSpec, parse_spec

from .. import credentials as keys
from .. import handover
from .. import status as st
from ..builders import decode_secret_data
from ..config import OperatorSettings
from ..errors import ReleasedError
from .context import Agent
from .inputs import BLOCKER_REASONS, MissingInput, gather
from .parts import CHECKS, Pass
from .references import request_reconcile
from .status_writer import merged_status, update_status

logger = logging.getLogger("whatsapp_operator")

#: agent uid -> ``time.monotonic()`` of its last check (or pass, which checks the same).
_last_checked: dict[str, float] = {}
#: agent uid -> ``time.monotonic()`` of its last held count.
_last_counted: dict[str, float] = {}


def mark_checked(uid: str, now: float | None = None) -> None:
    """Record that the agent's outside world was just looked at (by a pass or a check)."""
    _last_checked[uid] = time.monotonic() if now is None else now


def spread_check(uid: str, interval: float, now: float | None = None) -> None:
    """Make the agent's next check due at a random point of the coming ``interval`` (a resume
    pass that did not look outside: agents resumed together are checked at different times)."""
    now = time.monotonic() if now is None else now
    _last_checked[uid] = now - random.uniform(0.0, interval)


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
    _last_counted.pop(uid, None)
    handover.forget(uid)


def held_interval(body: Mapping[str, Any], settings: OperatorSettings) -> float:
    """How often the agent's held conversations are counted: every
    ``RELEASED_HANDOVER_COUNT_INTERVAL`` seconds while its spec asks for a handover or its
    status shows conversations held; otherwise (a hold can then only come from staff replying
    by hand) once per ``RELEASED_CHECK_INTERVAL``, with the other checks. Each count is a new
    connection to the agent's database (~2 ms of the operator's CPU)."""
    held = ((body.get("status") or {}).get("handover") or {}).get("held")
    if (body.get("spec") or {}).get("handover") is not None or held:
        return settings.handover_count_interval
    return max(settings.handover_count_interval, settings.check_interval)


def held_due(uid: str, interval: float, now: float | None = None, *, mark: bool = True) -> bool:
    """Whether the agent's held conversations are to be counted now (the first time at once);
    marks them counted when so, unless ``mark`` is false (only asking)."""
    now = time.monotonic() if now is None else now
    last = _last_counted.get(uid)
    if last is not None and now - last < interval:
        return False
    if mark:
        _last_counted[uid] = now
    return True


OWN_DATABASE_MESSAGE = (
    "the agent's database is its own (spec.database.secretRef): the operator does not connect "
    "to it; the bot's released_conversations_held gauge shows its held conversations"
)


async def _agent_url(agent: Agent) -> str | None:
    """The agent's current database URL: remembered from the last pass, else read once."""
    known = handover.known_url(agent.uid)
    if known is not None:
        return known
    secret = await agent.kube.get(
        "v1", "Secret", agent.namespace, child_names(agent.name).credentials_secret
    )
    agent_url = decode_secret_data((secret or {}).get("data")).get(keys.DATABASE_URL)
    if agent_url:
        handover.remember(agent.uid, agent_url)
    return agent_url or None


async def held_status(agent: Agent) -> dict[str, Any] | None:
    """What ``status.handover`` should say now (``None``: nothing).

    Every agent whose database the operator provisioned is counted; an agent with its own
    database is told why it is not, when it has ``spec.handover``. Raises
    :class:`LookupError` when there is nothing to say yet (the database is not provisioned
    yet): the status is left as it is.
    """
    try:
        spec = parse_spec(agent.body.get("spec") or {}, check=False)
    except InvalidSpec:
        raise LookupError("unparsable spec") from None
    if spec.database_secret_ref is not None:
        if spec.handover is None:
            return None
        return {"reason": handover.REASON_OWN_DATABASE, "message": OWN_DATABASE_MESSAGE}
    admin = agent.settings.postgres_admin_url
    if admin is None:
        raise LookupError("no shared PostgreSQL")
    agent_url = await _agent_url(agent)
    if agent_url is None:
        raise LookupError("not provisioned yet")
    try:
        url = handover.counting_url(admin.get_secret_value(), agent_url)
        held = await handover.count_held(url, spec.phone_number_id)
    except ValueError:
        handover.forget(agent.uid)
        raise LookupError("unusable databaseUrl") from None  # the pass rewrites it
    except handover.HeldCountFailed as exc:
        if exc.reason == handover.REASON_REJECTED:
            handover.forget(agent.uid)  # rotated meanwhile? read the Secret next time
        return {"reason": exc.reason, "message": exc.message}
    return {"held": held}


async def count_held(agent: Agent) -> dict[str, Any] | None:
    """Count the agent's held conversations and write ``status.handover`` when it changed
    (removed when there is nothing to say). Returns what the status says now."""
    current = agent.status.get("handover")
    if agent.deleting or st.ready_reason(agent.status) in BLOCKER_REASONS:
        return current
    try:
        wanted = await held_status(agent)
    except LookupError:
        return current
    if wanted == current:
        return wanted

    def mutate(_fresh: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
        if status.get("handover") == wanted:
            return None
        new = {k: v for k, v in status.items() if k != "handover"}
        if wanted is not None:
            # A merge patch merges objects: keys of the old value that go are sent as null.
            old = status.get("handover") or {}
            new["handover"] = {**{k: None for k in old if k not in wanted}, **wanted}
        return new

    await update_status(agent.kube, agent.namespace, agent.name, mutate)
    return wanted


async def check_outside(agent: Agent) -> Pass | None:
    """Run the :data:`~.parts.CHECKS` on one agent and write what they found.

    Returns the pass (for tests), or ``None`` when the agent is blocked or gone.
    """
    if agent.deleting or st.ready_reason(agent.status) in BLOCKER_REASONS:
        return None
    if agent.status.get("observedGeneration") != agent.generation:
        return None  # a pass is due (or running): it checks the same
    try:
        inputs = await gather(agent, children=False)
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

        await update_status(agent.kube, agent.namespace, agent.name, mutate, known=agent.body)
    if p.needs_reconcile:
        await request_reconcile(agent.kube, agent.namespace, agent.name)
    return p
