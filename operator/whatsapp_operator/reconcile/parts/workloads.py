"""Part ``workloads`` (condition ``WorkloadsReady``): have the Deployments rolled out?

Read after the children were applied in a pass, and again by :func:`refresh` whenever a
Deployment of the agent changes or the per-agent timer fires, so ``Ready`` follows the pods
without a full reconciliation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from released.agent.naming import child_names

from ... import status as st
from ...kube import Kube, RolloutState
from ...watching import ChildWatches
from ..inputs import BLOCKER_REASONS
from ..references import request_reconcile
from ..status_writer import merged_status, update_status
from .base import Pass


def workloads_condition(rollouts: list[RolloutState], *, suspended: bool) -> st.Condition:
    """``WorkloadsReady`` from the Deployments' rollout states."""
    if suspended:
        return st.Condition.false(
            st.WORKLOADS_READY, "Suspended", "spec.suspend is true: every workload is scaled to 0"
        )
    pending = [r for r in rollouts if not r.complete]
    if not pending:
        return st.Condition.true(
            st.WORKLOADS_READY, "RolledOut", "all Deployments run the current template"
        )
    return st.Condition.false(
        st.WORKLOADS_READY,
        "RolloutInProgress",
        "; ".join(r.describe() for r in pending),
    )


async def read_workloads(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    suspended: bool,
    children: ChildWatches | None = None,
) -> st.Condition:
    """``WorkloadsReady`` of agent ``name`` as its Deployments stand now (as the watches of
    ``children`` know them, else read with one list call)."""
    rollouts = None
    if children is not None:
        rollouts = children.rollouts(namespace, list(child_names(name).deployments))
    if rollouts is None:
        rollouts = await kube.deployment_rollouts(namespace, name)
    return workloads_condition(rollouts, suspended=suspended)


async def ensure(p: Pass) -> None:
    agent = p.agent
    p.workloads = await read_workloads(
        agent.kube,
        agent.namespace,
        agent.name,
        suspended=p.inputs.spec.suspend,
        children=agent.children,
    )
    p.outcome.set(p.workloads)


async def refresh(
    kube: Kube,
    namespace: str,
    name: str,
    events_for: Callable[[Mapping[str, Any]], st.Events],
    children: ChildWatches | None = None,
) -> None:
    """Recompute ``WorkloadsReady`` (and ``Ready``) of one agent from its Deployments.

    When the workloads have just become ready and the spec asks for the webhook, a
    reconciliation is requested: Meta verifies the callback at once, so registration waits
    for the web tier.
    """
    body = await kube.get_agent(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    if st.ready_reason(body.get("status")) in BLOCKER_REASONS:
        return
    suspended = bool((body.get("spec") or {}).get("suspend"))
    cond = await read_workloads(kube, namespace, name, suspended=suspended, children=children)

    def mutate(_fresh: dict[str, Any], current: dict[str, Any]) -> dict[str, Any] | None:
        if st.ready_reason(current) in BLOCKER_REASONS:
            return None
        # The Deployments show the spec last reconciled: that generation is the one observed.
        observed = current.get("observedGeneration")
        return merged_status(current, generation=observed, conditions=[cond], observed=False)

    new = await update_status(kube, namespace, name, mutate, known=body)
    if new is None or cond.status != "True":
        return
    was = st.get_condition(body.get("status"), st.WORKLOADS_READY)
    if was is None or was.get("status") != "True":
        events_for(body).info("WorkloadsReady", "all Deployments run the current template")
    # Whenever the workloads are ready and the webhook waits for them, not only when this call
    # saw the change: a pass may have written WorkloadsReady=True meanwhile, yet registered
    # nothing because it ran its webhook part before (the agent then stayed un-Ready).
    registered = st.get_condition(new, st.WEBHOOK_REGISTERED)
    if _register_requested(body) and (registered is None or registered.get("status") != "True"):
        await request_reconcile(kube, namespace, name)


def _register_requested(body: Mapping[str, Any]) -> bool:
    """Whether the agent's spec asks the operator to register its webhook with Meta."""
    webhook = ((body.get("spec") or {}).get("ingress") or {}).get("webhook") or {}
    return bool(webhook.get("register"))


def webhook_stalled(body: Mapping[str, Any]) -> bool:
    """Whether the agent's webhook still waits for workloads that its status says are ready.

    Level-triggered safety net for the timer: the edge that requests the pass
    (:func:`refresh`) can be missed when a pass and a rotation step interleave (seen in CI:
    the agent stayed ``WaitingForWorkloads`` with ``WorkloadsReady=True`` and Meta already
    holding the new verify token). The pass that this asks for registers the webhook.
    """
    status = body.get("status") or {}
    workloads = st.get_condition(status, st.WORKLOADS_READY)
    registered = st.get_condition(status, st.WEBHOOK_REGISTERED)
    return bool(
        _register_requested(body)
        and workloads is not None
        and workloads.get("status") == "True"
        and registered is not None
        and registered.get("reason") == "WaitingForWorkloads"
    )
