"""The container resources each tier of an agent runs with: the defaults and the effective ones.

``spec.web.resources`` (and worker's, Redis's) replace the defaults whole when given; without
them a tier gets :data:`DEFAULT_RESOURCES`, the worker :func:`worker_default_resources` (its
memory grows with its concurrency). The operator's builders put :func:`effective_resources` on
the containers, and the platform's bounds (:mod:`released.agent.policy`) are checked against the
same values, so what is checked is what runs.
"""

from __future__ import annotations

from typing import Any

from .naming import PURGE, REDIS, WEB, WORKER
from .spec import AgentSpec, Resources

#: Container resources when the spec gives none (``spec.*.resources`` replaces them whole).
#: Grounded in ``python -m tests.bench.footprint`` (tests/bench/README.md, after 300 answered
#: messages): the request is the measured RSS with about 25 % of headroom (a container's charge
#: lies between its PSS and its RSS), rounded up to 16Mi. Web: RSS 70 MiB (PSS 52); its limit
#: leaves room for ``WEBHOOK_BODY_BUDGET_BYTES`` (48 MiB of bodies at once) and more. Purge (a
#: CronJob's run): peak RSS 73 MiB. Redis: RSS 5 MiB; its limit is the room for a backlog. The
#: worker is sized by :func:`worker_default_resources` (it grows a little with concurrency).
DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    WEB: {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
    WORKER: {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    PURGE: {"requests": {"cpu": "10m", "memory": "96Mi"}, "limits": {"memory": "192Mi"}},
    REDIS: {"requests": {"cpu": "25m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
}

#: The Redis pod's ``acl-reload`` container (a shell loop: about 1 MiB), whatever the spec says.
ACL_RELOAD_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "5m", "memory": "8Mi"},
    "limits": {"memory": "32Mi"},
}

#: The tiers whose resources a spec may set (the purge always runs with its defaults).
TENANT_TIERS: tuple[str, ...] = (WEB, WORKER, REDIS)


#: The worker's default memory request: a base and a share per concurrent task (Mi).
WORKER_BASE_MI = 120
WORKER_PER_SLOT_MI = 4
#: Headroom of the worker's limit above its request (Mi).
WORKER_LIMIT_HEADROOM_MI = 128


def worker_default_resources(concurrency: int) -> dict[str, dict[str, str]]:
    """A worker's default requests/limits. One process runs ``concurrency`` tasks in threads:
    measured RSS 102 MiB (PSS 84) at concurrency 2 and about 1 MiB more per extra slot (PSS 85,
    88, 90 MiB at 1, 4, 8), so 120Mi + 4Mi per slot (128Mi at the default 2; a slot's share also
    covers a long conversation in flight), and 128Mi more for the limit."""
    request = WORKER_BASE_MI + WORKER_PER_SLOT_MI * concurrency
    return {
        "requests": {"cpu": "50m", "memory": f"{request}Mi"},
        "limits": {"memory": f"{request + WORKER_LIMIT_HEADROOM_MI}Mi"},
    }


def tier_resources(spec: AgentSpec, component: str) -> Resources | None:
    """What ``spec`` says about ``component``'s resources (``None``: the defaults apply)."""
    if component == WEB:
        return spec.web.resources
    if component == WORKER:
        return spec.worker.resources
    if component == REDIS:
        return spec.redis.resources
    return None


def effective_resources(spec: AgentSpec, component: str) -> dict[str, Any]:
    """The ``resources`` of ``component``'s container: the spec's, else the defaults."""
    resources = tier_resources(spec, component)
    if resources is not None and (resources.requests or resources.limits):
        return resources.to_k8s()
    if component == WORKER:
        return worker_default_resources(spec.worker.concurrency)
    return {kind: dict(values) for kind, values in DEFAULT_RESOURCES[component].items()}
