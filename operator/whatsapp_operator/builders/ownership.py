"""Whose object is it: the operator never adopts an object it did not create.

Children are named after the agent (``NAME-web``, ``NAME-credentials``, ...), so a tenant can
name an agent after an object that already exists in the namespace — a Deployment or a Secret
someone else made. Server-side apply with ``force`` would take it over, and the owner
reference it then gets would make the garbage collector delete it with the agent. Before
anything is applied, :func:`foreign_children` lists the objects of the children's names that
exist without this agent as their controller; reconciliation refuses the whole pass
(``Ready=False, reason=Conflict``) and leaves them untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from released.agent.naming import child_names

from .context import AGENT_API_VERSION

#: ``Ready=False`` reason when an object of a child's name belongs to someone else.
REASON_CONFLICT = "Conflict"


def child_refs(
    name: str,
    *,
    pdb_api_version: str = "policy/v1",
    cronjob_api_version: str = "batch/v1",
    service_monitor: bool = False,
) -> list[tuple[str, str, str]]:
    """``(apiVersion, kind, name)`` of every object the operator may create, change or delete
    for agent ``name``: the children :func:`~whatsapp_operator.builders.build_children` builds,
    the ones it prunes, and ``NAME-credentials``."""
    names = child_names(name)
    refs = [
        ("v1", "ServiceAccount", names.service_account),
        ("v1", "ConfigMap", names.faqs_configmap),
        ("v1", "Secret", names.credentials_secret),
        ("v1", "PersistentVolumeClaim", names.redis_pvc),
        ("v1", "Service", names.web_service),
        ("v1", "Service", names.worker_service),
        ("v1", "Service", names.redis_service),
        *(
            ("networking.k8s.io/v1", "NetworkPolicy", policy)
            for policy in (
                names.web_network_policy,
                names.worker_network_policy,
                names.purge_network_policy,
                names.redis_network_policy,
                names.egress_network_policy,
            )
        ),
        *(("apps/v1", "Deployment", deployment) for deployment in names.deployments),
        (cronjob_api_version, "CronJob", names.purge_cronjob),
        (pdb_api_version, "PodDisruptionBudget", names.web_pdb),
        ("networking.k8s.io/v1", "Ingress", names.ingress),
    ]
    if service_monitor:
        refs.append(("monitoring.coreos.com/v1", "ServiceMonitor", names.service_monitor))
    return refs


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj``'s controller owner reference is the agent with ``uid``."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") == uid:
            return bool(
                ref.get("apiVersion") == AGENT_API_VERSION and ref.get("kind") == "WhatsAppAgent"
            )
    return False


def foreign_children(existing: Iterable[Mapping[str, Any]], uid: str) -> list[str]:
    """``Kind/name`` of each existing object (of a child's name) not controlled by ``uid``."""
    return sorted(
        f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"
        for obj in existing
        if not controlled_by(obj, uid)
    )


def conflict_message(foreign: list[str], agent: str) -> str:
    """The ``Ready=False`` message for :func:`foreign_children`'s findings."""
    listed = ", ".join(foreign)
    return (
        f"{listed} already exist{'s' if len(foreign) == 1 else ''} and "
        f"{'was' if len(foreign) == 1 else 'were'} not created for agent {agent!r}: the "
        "operator leaves them untouched and builds nothing; rename the agent, or delete or "
        "rename those objects"
    )
