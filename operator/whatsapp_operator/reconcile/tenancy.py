"""What a tenant may not ask for, checked before a pass builds anything (docs/security.md).

:func:`~whatsapp_operator.reconcile.inputs.gather` calls these; each raises
:class:`~released.agent.validation.InvalidSpec` with its reason, which the pass writes as
``Ready=False`` (and a Warning Event) before touching anything:

- :func:`check_policy` — the spec against the platform's policy (Ingress host, class and
  annotations; resources, replicas, storage): ``PolicyViolation``. The admission webhook
  refuses the same specs up front.
- :func:`check_meta_secret` — a ``REPLACE_ME`` placeholder or an app secret not shaped like
  Meta's: ``InvalidMetaSecret``. With a guessable app secret anyone could sign webhooks, so
  the agent's own Ingress (if an earlier pass made one) is deleted as well.
- :func:`check_openai_base_url` — the OpenAI Secret's ``baseUrl`` outside the allowlist or
  resolving to an internal address: ``OpenAIBaseUrlRefused``.
- :func:`check_notify_url` — ``spec.handover.notify.url`` not https or resolving to an internal
  address: ``HandoverUrlRefused`` (the worker would call it on the tenant's behalf).
- :func:`check_ownership` — an object of a child's name that this agent does not control (a
  same-named Deployment or Secret someone else made): ``Conflict``; it stays untouched.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from released.agent.policy import (
    REASON_HANDOVER_URL,
    REASON_META_SECRET,
    REASON_OPENAI_URL,
    REASON_POLICY,
)
from released.agent.policy import check_meta_secret as meta_secret_problems
from released.agent.policy import check_policy as policy_problems
from released.agent.spec import AgentSpec
from released.agent.validation import InvalidSpec

from ..applying import applied_hash
from ..builders.ownership import (
    REASON_CONFLICT,
    child_refs,
    conflict_message,
    controlled_by,
    foreign_children,
)
from ..egress import base_url_problems, notify_url_problems
from .context import Agent

if TYPE_CHECKING:
    from .inputs import Inputs

#: The reasons of this module: blockers under which the parts are not meaningful.
REASONS = frozenset(
    {REASON_POLICY, REASON_META_SECRET, REASON_OPENAI_URL, REASON_HANDOVER_URL, REASON_CONFLICT}
)


def check_policy(agent: Agent, spec: AgentSpec) -> None:
    """The spec within the platform's policy, or ``InvalidSpec(reason=PolicyViolation)``."""
    problems = policy_problems(spec, agent.settings.policy, agent.namespace)
    if problems:
        raise InvalidSpec(problems, reason=REASON_POLICY)


async def check_meta_secret(agent: Agent, inputs: Inputs) -> None:
    """No placeholder, a plausible app secret; else the agent's Ingress goes and the pass stops."""
    name = inputs.spec.secrets.meta.name
    values = {key: inputs.value(name, key) for key in ("accessToken", "appSecret")}
    problems = meta_secret_problems(values, name)
    if not problems:
        return
    ingress = ("networking.k8s.io/v1", "Ingress", agent.name)
    existing = await agent.kube.get(ingress[0], ingress[1], agent.namespace, ingress[2])
    if existing is not None and controlled_by(existing, agent.uid):
        await agent.kube.delete(ingress[0], ingress[1], agent.namespace, ingress[2])
        problems.append(
            f"the Ingress {agent.name!r} was removed until the Secret holds a real app secret"
        )
    raise InvalidSpec(problems, reason=REASON_META_SECRET)


async def check_openai_base_url(agent: Agent, inputs: Inputs) -> None:
    """A tenant's ``baseUrl`` allowlisted and resolving to public addresses only."""
    url = inputs.openai_base_url
    if url is None:
        return
    problems = await base_url_problems(
        url, agent.settings.policy, default_url=agent.settings.openai_base_url
    )
    if problems:
        raise InvalidSpec(problems, reason=REASON_OPENAI_URL)


async def check_notify_url(agent: Agent, spec: AgentSpec) -> None:
    """The handover notification URL is https and resolves to addresses the policy allows."""
    problems = await notify_url_problems(spec, agent.settings.policy)
    if problems:
        raise InvalidSpec(problems, reason=REASON_HANDOVER_URL)


async def check_ownership(agent: Agent, *, service_monitor: bool) -> dict[tuple[str, str], str]:
    """Every existing object of a child's name is this agent's, or nothing is done.

    Returns ``(kind, name)`` -> the :data:`~whatsapp_operator.applying.APPLIED_HASH` annotation
    (``""`` without one) of each child that exists: what the children part compares with.
    Children that the label-selected watches (``agent.children``) know are not read again; the
    others are (an object without the operator's labels is found only so).
    """
    kube = agent.kube
    refs = child_refs(
        agent.name,
        pdb_api_version=await kube.pdb_api_version(agent.namespace),
        cronjob_api_version=await kube.cronjob_api_version(agent.namespace),
        service_monitor=service_monitor,
    )
    known: dict[tuple[str, str], str] = {}
    foreign: list[str] = []
    unknown = []
    cache = agent.children
    synced = cache is not None and cache.synced(agent.namespace)
    for ref in refs:
        _, kind, name = ref
        record = cache.get(kind, agent.namespace, name) if cache is not None and synced else None
        if record is None:
            unknown.append(ref)  # absent, not ours (no label), or not watched: read it
        elif record.controller == agent.uid:
            known[(kind, name)] = record.applied_hash
        else:
            foreign.append(f"{kind}/{name}")
    found = await asyncio.gather(
        *(kube.get(api_version, kind, agent.namespace, name) for api_version, kind, name in unknown)
    )
    existing = [
        {**obj, "kind": kind} for obj, (_, kind, _) in zip(found, unknown, strict=True) if obj
    ]
    foreign = sorted([*foreign, *foreign_children(existing, agent.uid)])
    if foreign:
        raise InvalidSpec([conflict_message(foreign, agent.name)], reason=REASON_CONFLICT)
    known.update(
        {(str(obj["kind"]), str(obj["metadata"]["name"])): applied_hash(obj) for obj in existing}
    )
    return known
