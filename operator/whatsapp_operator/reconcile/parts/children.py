"""Part ``children``: build every child, apply those that changed (server-side apply), prune
the unwanted (what earlier versions built only when the agent is its controller).

Each child is stamped with the hash of its manifest (:mod:`whatsapp_operator.applying`) and
applied only when the child does not exist or was applied with another hash, as the pass's
ownership check found it; the children to prune are deleted only when that check found them.
The changed children are applied together, in two waves: first what the pods use, then the
Deployments and the CronJob.

The pods' configuration checksum (``status.configChecksum``) covers the FAQs and the
fingerprints of every Secret the pods read, so a change to any of them rolls the pods.
"""

from __future__ import annotations

import asyncio

from released.agent.naming import child_names

from ... import builders
from ...applying import needs_apply, with_applied_hash
from ...builders.ownership import controlled_by
from ...kube import Kube, KubeError
from .base import Pass

#: Applied after the rest (ServiceAccount, ConfigMap, Services, ...), which their pods use.
WORKLOAD_KINDS = frozenset({"Deployment", "CronJob"})


async def _controlled(kube: Kube, ctx: builders.AgentContext, ref: dict[str, str]) -> bool:
    """Whether the object ``ref`` names exists with the agent as its controller."""
    obj = await kube.get(ref["apiVersion"], ref["kind"], ref["namespace"], ref["name"])
    return obj is not None and controlled_by(obj, ctx.uid)


async def ensure(p: Pass) -> None:
    agent, inputs = p.agent, p.inputs
    kube = agent.kube
    prints = inputs.fingerprints()
    prints[child_names(agent.name).credentials_secret] = builders.secret_fingerprint(p.credentials)
    checksum = builders.compute_checksum(inputs.faqs, prints)
    ctx = builders.AgentContext.from_resource(
        agent.body,
        agent.settings,
        spec=inputs.spec,
        faqs=inputs.faqs,
        config_checksum=checksum,
        openai_base_url=inputs.openai_base_url,
        has_service_monitor_crd=inputs.service_monitor,
        pdb_api_version=await kube.pdb_api_version(agent.namespace),
        cronjob_api_version=await kube.cronjob_api_version(agent.namespace),
        vector_store_id=p.vector_store_id,
    )
    wanted = [with_applied_hash(child) for child in builders.build_children(ctx)]
    # What earlier versions made (``controlledOnly``) is looked for until this version's purge
    # CronJob exists (stamped): pruned first, so a failure leaves the stamp for the next pass.
    stamped = bool(inputs.children.get(("CronJob", child_names(agent.name).purge_cronjob)))
    removed = []
    for gone in builders.absent_children(ctx):
        try:
            if gone.get("controlledOnly"):
                if stamped or not await _controlled(kube, ctx, gone):
                    continue  # gone already, or someone else's object of that name: untouched
            elif (gone["kind"], gone["name"]) not in inputs.children:
                continue  # the ownership check found none
            if await kube.delete(gone["apiVersion"], gone["kind"], gone["namespace"], gone["name"]):
                removed.append(f"{gone['kind']}/{gone['name']}")
        except KubeError as exc:
            if not exc.not_found:  # 404 also when the kind itself is not served
                raise
    changed = [child for child in wanted if needs_apply(child, inputs.children)]
    # Two waves, each applied at once: what the workloads use, then the workloads.
    for wave in (
        [child for child in changed if child["kind"] not in WORKLOAD_KINDS],
        [child for child in changed if child["kind"] in WORKLOAD_KINDS],
    ):
        await asyncio.gather(*(kube.apply(child) for child in wave))
    if removed:
        agent.events.info("Pruned", "deleted children no longer wanted: " + ", ".join(removed))
    p.outcome.fields["configChecksum"] = checksum
