"""Writing an agent's status: read, let a function compute the new status, write, retry on 409.

The status subresource is written by the operator only (kopf keeps its own progress in
annotations). Every write carries the ``resourceVersion`` it read, so concurrent writers (a
reconciliation, the timer, a Deployment event) never lose each other's conditions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from .. import KIND, metrics
from .. import status as st
from ..errors import TemporaryError, redact
from ..kube import AGENT_API_VERSION, Kube, KubeError
from .context import Agent

#: ``mutate(fresh_body, current_status)`` returns the new status, or ``None`` to write nothing.
Mutate = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None]


def ready_status(status: Mapping[str, Any]) -> str:
    """The ``Ready`` condition's status (``"Unknown"`` when there is none)."""
    cond = st.get_condition(status, st.READY)
    return str(cond.get("status", "Unknown")) if cond else "Unknown"


async def update_status(
    kube: Kube,
    namespace: str,
    name: str,
    mutate: Mutate,
    *,
    attempts: int = 5,
    known: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Read the agent, let ``mutate(body, status)`` return the new status, write it.

    The write carries the read ``resourceVersion``, so a concurrent writer makes it fail with
    409 and it is redone on fresh data. ``known`` (the agent as just delivered or read) stands
    in for the first read: an unchanged status then costs no request at all. Returns the status
    now stored (``None`` when the agent is gone); raises :class:`TemporaryError` when every
    attempt met a conflict.
    """
    for attempt in range(attempts):
        if attempt == 0 and known is not None and known.get("metadata", {}).get("resourceVersion"):
            body: dict[str, Any] | None = copy.deepcopy(dict(known))
        else:
            body = await kube.get_agent(namespace, name)
        if body is None:
            return None
        current = dict(body.get("status") or {})
        new = mutate(body, current)
        if new is None:
            return current
        if new == current:
            # Nothing to write, but the gauge must count this agent too (after a restart the
            # operator's first look at an unchanged agent lands here).
            metrics.set_agent_ready(namespace, name, ready_status(current))
            return current
        # A merge patch keeps keys it does not mention: removed ones are sent as null.
        removed = {key: None for key in current if key not in new}
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": {**new, **removed},
        }
        try:
            await kube.merge_patch(
                AGENT_API_VERSION, KIND, namespace, name, patch, subresource="status"
            )
        except KubeError as exc:
            if exc.conflict:
                continue
            if exc.not_found:
                return None
            raise
        metrics.set_agent_ready(namespace, name, ready_status(new))
        return new
    raise TemporaryError("status kept changing under us; retrying", delay=2)


def merged_status(
    current: Mapping[str, Any],
    *,
    generation: int | None,
    conditions: list[st.Condition],
    blocker: st.Condition | None = None,
    fields: Mapping[str, Any] | None = None,
    observed: bool = True,
) -> dict[str, Any]:
    """``current`` with ``conditions`` set, ``Ready`` recomputed (``blocker`` wins), ``fields``
    set (``None`` removes one) and, with ``observed``, ``observedGeneration``."""
    new = dict(current)
    new["conditions"] = st.apply_conditions(
        list(current.get("conditions") or []), conditions, generation, blocker=blocker
    )
    if observed and generation is not None:
        new["observedGeneration"] = generation
    for key, value in (fields or {}).items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return new


async def write_blocked(agent: Agent, reason: str, message: str, *, event: bool = True) -> None:
    """``Ready=False`` with ``reason`` (nothing else is touched) and a Warning Event when the
    reason or message changed (the condition keeps the rest)."""
    generation = agent.generation
    blocker = st.Condition.false(st.READY, reason, message)

    def mutate(_body: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        return merged_status(current, generation=generation, conditions=[], blocker=blocker)

    await update_status(agent.kube, agent.namespace, agent.name, mutate)
    if event:
        old = None
        ready = st.get_condition(agent.status, st.READY)
        if ready is not None:
            old = (ready.get("reason"), ready.get("message"))
        if old != (reason, redact(message)[: st.MAX_MESSAGE]):
            agent.events.warn(reason, message)
