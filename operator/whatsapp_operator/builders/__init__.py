"""Pure ``build_*`` functions: an :class:`AgentContext` in, Kubernetes manifests (dicts) out.

No I/O here: the caller reads what the builders need (the agent, its FAQ ConfigMap, Secret
fingerprints, whether the ServiceMonitor CRD exists), builds, and applies the result with
server-side apply. :func:`build_children` returns every child that should exist;
:func:`absent_children` names the optional ones that should not (to delete them).

- ``context``    ``AgentContext``, owner references, checksums, generated credentials.
- ``workloads``  the three Deployments, the purge CronJob and the bot's environment.
- ``objects``    ServiceAccount, ConfigMap, PVC, Services, Ingress, five NetworkPolicies, PDB,
                 ServiceMonitor.
"""

from __future__ import annotations

from typing import Any

from released.agent.naming import child_names
from released.agent.resources import DEFAULT_RESOURCES

from .context import (
    AGENT_API_VERSION,
    AgentContext,
    build_credentials_secret,
    compute_checksum,
    decode_secret_data,
    generate_credentials,
    object_meta,
    owner_reference,
    secret_fingerprint,
)
from .objects import (
    build_egress_network_policy,
    build_faqs_configmap,
    build_ingress,
    build_purge_network_policy,
    build_redis_network_policy,
    build_redis_pvc,
    build_redis_service,
    build_service_account,
    build_service_monitor,
    build_web_network_policy,
    build_web_pdb,
    build_web_service,
    build_worker_network_policy,
    build_worker_service,
)
from .workloads import (
    FAQS_PATH,
    NON_SETTING_ENV,
    REDIS_PORT,
    WEB_PORT,
    bot_env,
    build_purge_cronjob,
    build_redis_deployment,
    build_web_deployment,
    build_worker_deployment,
    redis_url,
)

__all__ = [
    "AGENT_API_VERSION",
    "DEFAULT_RESOURCES",
    "FAQS_PATH",
    "NON_SETTING_ENV",
    "REDIS_PORT",
    "WEB_PORT",
    "AgentContext",
    "absent_children",
    "bot_env",
    "build_children",
    "build_credentials_secret",
    "build_egress_network_policy",
    "build_faqs_configmap",
    "build_ingress",
    "build_purge_cronjob",
    "build_purge_network_policy",
    "build_redis_deployment",
    "build_redis_network_policy",
    "build_redis_pvc",
    "build_redis_service",
    "build_service_account",
    "build_service_monitor",
    "build_web_deployment",
    "build_web_network_policy",
    "build_web_pdb",
    "build_web_service",
    "build_worker_deployment",
    "build_worker_network_policy",
    "build_worker_service",
    "compute_checksum",
    "decode_secret_data",
    "generate_credentials",
    "object_meta",
    "owner_reference",
    "redis_url",
    "secret_fingerprint",
]


def build_children(agent: AgentContext) -> list[dict[str, Any]]:
    """Every child of the agent except ``NAME-credentials``, in a sensible apply order.

    (The credentials Secret holds generated values and is built by
    :func:`build_credentials_secret` by whoever generates or rotates them.)
    """
    children: list[dict[str, Any] | None] = [
        build_service_account(agent),
        build_faqs_configmap(agent),
        build_redis_pvc(agent),
        build_redis_service(agent),
        build_web_service(agent),
        build_worker_service(agent),
        build_redis_network_policy(agent),
        build_web_network_policy(agent),
        build_worker_network_policy(agent),
        build_purge_network_policy(agent),
        build_egress_network_policy(agent),
        build_redis_deployment(agent),
        build_web_deployment(agent),
        build_worker_deployment(agent),
        build_purge_cronjob(agent),
        build_web_pdb(agent),
        build_ingress(agent),
        build_service_monitor(agent),
    ]
    return [child for child in children if child is not None]


def absent_children(agent: AgentContext) -> list[dict[str, str]]:
    """Children that must not exist now (``apiVersion``, ``kind``, ``name``, ``namespace``): the
    Ingress without ``ingress.host``, the ServiceMonitor without its CRD (deleting that one
    fails harmlessly with 404 when the CRD is gone too), and what earlier versions made and this
    one replaced (the Celery beat Deployment and its NetworkPolicy, ``NAME-beat``): those carry
    ``"controlledOnly": "true"``, to be deleted only when the agent is their controller.
    """
    names = child_names(agent.name)
    absent: list[dict[str, str]] = [
        {
            "apiVersion": api_version,
            "kind": kind,
            "name": names.retired_beat,
            "namespace": agent.namespace,
            "controlledOnly": "true",
        }
        for api_version, kind in (
            ("apps/v1", "Deployment"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
        )
    ]
    if build_ingress(agent) is None:
        absent.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "name": names.ingress,
                "namespace": agent.namespace,
            }
        )
    if build_service_monitor(agent) is None:
        absent.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "name": names.service_monitor,
                "namespace": agent.namespace,
            }
        )
    return absent
