"""One reconciliation pass of an agent (create, update, resume):

1. :func:`~.inputs.gather` the inputs (spec, preconditions, FAQs, the user's Secrets), once;
2. the :data:`~.parts.PREREQUISITES` (credentials Secret, provisioned database);
3. the :data:`~.parts.PARTS` (knowledge, model, children, workloads, Meta account, WABA
   subscription, webhook), each recording its condition;
4. one status write: the parts' conditions and fields, ``CredentialsRotated`` and
   ``nextRotation`` from the rotation state, ``observedGeneration``, ``Ready``.

A problem in 1 or 2 is written as ``Ready=False`` with its reason and nothing else is done.
:func:`reconcile` returns when the agent is where its spec says, and raises
:class:`~whatsapp_operator.errors.TemporaryError` (with the delay to wait) when the pass should
be retried; the kopf handler turns that into kopf's own retry.
"""

from __future__ import annotations

from typing import Any

from released.agent.validation import InvalidSpec

from .. import metrics
from .. import rotation as rot
from .. import status as st
from ..errors import PermanentError, TemporaryError
from .checks import mark_checked, spread_check
from .context import MAX_BACKOFF, MISSING_INPUT_MAX_DELAY, Agent, backoff
from .inputs import MissingInput, gather
from .parts import PARTS, PREREQUISITES, SETTLED_RESUME_PARTS, Pass
from .rotate import rotation_fields
from .status_writer import merged_status, update_status, write_blocked


def is_settled(agent: Agent) -> bool:
    """Whether the agent's last pass saw its current generation through: ``Ready`` at this
    ``observedGeneration``, no rotation under way."""
    status = agent.status
    return (
        status.get("observedGeneration") == agent.generation
        and st.is_ready(status)
        and rot.RotationState.from_status(status).phase is rot.RotationPhase.IDLE
    )


async def reconcile(agent: Agent, retry: int, *, resume: bool = False) -> None:
    """Drive one agent to its spec (``retry``: how many times kopf has retried this pass).

    ``resume``: the operator has just started. A settled agent (:func:`is_settled`) then gets
    only :data:`~.parts.SETTLED_RESUME_PARTS`, and its periodic check of the outside world
    comes at a random point of the check interval.
    """
    settled = resume and retry == 0 and is_settled(agent)
    if settled:
        spread_check(agent.uid, agent.settings.check_interval)
    else:
        # The pass looks at the model and at Meta: the periodic check waits a full interval.
        mark_checked(agent.uid)
    try:
        p = Pass(agent=agent, inputs=await gather(agent))
        for prerequisite in PREREQUISITES:
            await prerequisite(p)
    except InvalidSpec as exc:
        await write_blocked(agent, exc.reason, exc.message)
        metrics.count_reconcile("invalid")
        return
    except MissingInput as exc:
        await write_blocked(agent, exc.reason, exc.message)
        metrics.count_reconcile("retry")
        # Retried with backoff (5 s, 10 s, ... at most 30 s): an object that does not exist yet
        # carries no label, so no watch reports it when it appears (see watching.py).
        raise TemporaryError(
            exc.message, delay=min(backoff(retry), MISSING_INPUT_MAX_DELAY)
        ) from None
    except PermanentError as exc:  # the database: a conflict a person must resolve
        await write_blocked(agent, exc.reason, exc.message)
        metrics.count_reconcile("error")
        raise TemporaryError(exc.message, delay=MAX_BACKOFF) from None
    except TemporaryError as exc:
        await write_blocked(agent, exc.reason, exc.message)
        metrics.count_reconcile("retry")
        raise TemporaryError(exc.message, delay=max(exc.delay, backoff(retry))) from None

    for part in SETTLED_RESUME_PARTS if settled else PARTS:
        await part(p)

    outcome, spec = p.outcome, p.inputs.spec

    def mutate(fresh: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        # Rotation state from the fresh status: the timer may have moved it meanwhile.
        rot_fields, rot_cond = rotation_fields(fresh, spec)
        # The blocker (if any) is lifted: Ready is recomputed from the parts.
        return merged_status(
            current,
            generation=agent.generation,
            conditions=[*outcome.conditions, rot_cond],
            fields={**outcome.fields, **rot_fields},
        )

    new = await update_status(agent.kube, agent.namespace, agent.name, mutate, known=agent.body)
    old_ready = st.get_condition(agent.status, st.READY)
    if (
        new is not None
        and st.is_ready(new)
        and not (old_ready and old_ready.get("status") == "True")
    ):
        agent.events.info("Ready", "the agent is ready")
    if outcome.retry is not None:
        delay = outcome.retry.delay if isinstance(outcome.retry, TemporaryError) else 60.0
        metrics.count_reconcile("retry")
        raise TemporaryError(outcome.retry.message, delay=max(delay, backoff(retry)))
    metrics.count_reconcile("success")
