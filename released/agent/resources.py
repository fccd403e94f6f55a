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
#: Defaults grounded in tests/bench (footprint): web 81 MiB PSS, Redis 7 MiB; the
#: worker is sized by :func:`worker_default_resources` (its memory grows with concurrency).
DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    WEB: {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    WORKER: {"requests": {"cpu": "50m", "memory": "320Mi"}, "limits": {"memory": "512Mi"}},
    PURGE: {"requests": {"cpu": "10m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    REDIS: {"requests": {"cpu": "25m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
}

#: The tiers whose resources a spec may set (the purge always runs with its defaults).
TENANT_TIERS: tuple[str, ...] = (WEB, WORKER, REDIS)


def worker_default_resources(concurrency: int) -> dict[str, dict[str, str]]:
    """A worker's default requests/limits: measured ~80 MiB plus ~90 MiB per prefork child
    (PSS after traffic), so 128Mi + 96Mi per child, and 192Mi of headroom for the limit."""
    request = 128 + 96 * concurrency
    return {
        "requests": {"cpu": "50m", "memory": f"{request}Mi"},
        "limits": {"memory": f"{request + 192}Mi"},
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
