"""The agent's other children: ServiceAccount, ConfigMap, PVC, Services, Ingress, policies."""

from __future__ import annotations

from typing import Any

from released.agent.naming import (
    AGENT,
    APP_NAME,
    BOT_COMPONENTS,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_NAME,
    REDIS,
    WEB,
    WORKER,
    child_names,
    selector_labels,
)
from released.agent.spec import faqs_json

from .context import AgentContext, object_meta
from .workloads import FAQS_FILE, REDIS_PORT, WEB_PORT, WORKER_METRICS_PORT


def build_service_account(agent: AgentContext) -> dict[str, Any]:
    """``NAME``: the pods' identity; no API token is mounted (the bot never calls Kubernetes)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(agent, child_names(agent.name).service_account, AGENT),
        "automountServiceAccountToken": False,
    }


def build_faqs_configmap(agent: AgentContext) -> dict[str, Any]:
    """``NAME-faqs``: the resolved FAQs as ``faqs.json`` (a JSON list of ``{q, a}``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(agent, child_names(agent.name).faqs_configmap, AGENT),
        "data": {FAQS_FILE: faqs_json(list(agent.resolved_faqs))},
    }


def build_redis_pvc(agent: AgentContext) -> dict[str, Any]:
    """``NAME-redis``: Redis's append-only file and snapshots."""
    redis = agent.spec.redis
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": redis.storage}},
    }
    if redis.storage_class_name:
        spec["storageClassName"] = redis.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(agent, child_names(agent.name).redis_pvc, REDIS),
        "spec": spec,
    }


def _service(
    agent: AgentContext, name: str, component: str, port_name: str, port: int
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(agent, name, component),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(agent.name, component),
            "ports": [
                {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
            ],
        },
    }


def build_web_service(agent: AgentContext) -> dict[str, Any]:
    """``NAME-web``: port 8000 (``http``) of the web pods."""
    return _service(agent, child_names(agent.name).web_service, WEB, "http", WEB_PORT)


def build_worker_service(agent: AgentContext) -> dict[str, Any]:
    """``NAME-worker``: port 9808 (``metrics``) of the workers, for the ServiceMonitor."""
    return _service(
        agent, child_names(agent.name).worker_service, WORKER, "metrics", WORKER_METRICS_PORT
    )


def build_redis_service(agent: AgentContext) -> dict[str, Any]:
    """``NAME-redis``: port 6379 (``redis``) of the Redis pod."""
    return _service(agent, child_names(agent.name).redis_service, REDIS, "redis", REDIS_PORT)


def build_ingress(agent: AgentContext) -> dict[str, Any] | None:
    """``NAME``: ``https://HOST/webhook`` to the web Service; ``None`` without ``ingress.host``.

    Only ``/webhook`` is routed: ``/metrics``, ``/healthz`` and ``/readyz`` stay inside the
    cluster.
    """
    ingress = agent.spec.ingress
    if ingress is None or not ingress.host:
        return None
    names = child_names(agent.name)
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": ingress.host,
                "http": {
                    "paths": [
                        {
                            "path": "/webhook",
                            "pathType": "Prefix",
                            "backend": {
                                "service": {"name": names.web_service, "port": {"name": "http"}}
                            },
                        }
                    ]
                },
            }
        ]
    }
    if ingress.class_name:
        spec["ingressClassName"] = ingress.class_name
    if ingress.tls_secret_name:
        spec["tls"] = [{"hosts": [ingress.host], "secretName": ingress.tls_secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": object_meta(agent, names.ingress, WEB, annotations=ingress.annotations),
        "spec": spec,
    }


def build_redis_network_policy(agent: AgentContext) -> dict[str, Any]:
    """``NAME-redis``: only this agent's web, worker and beat pods reach Redis, on 6379."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(agent, child_names(agent.name).redis_network_policy, REDIS),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(agent.name, REDIS)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {LABEL_NAME: APP_NAME, LABEL_INSTANCE: agent.name},
                                "matchExpressions": [
                                    {
                                        "key": LABEL_COMPONENT,
                                        "operator": "In",
                                        "values": list(BOT_COMPONENTS),
                                    }
                                ],
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": REDIS_PORT}],
                }
            ],
        },
    }


def build_web_network_policy(agent: AgentContext) -> dict[str, Any]:
    """``NAME-web``: the web pods accept connections on port 8000 only (from anywhere)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(agent, child_names(agent.name).web_network_policy, WEB),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(agent.name, WEB)},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": WEB_PORT}]}],
        },
    }


def build_web_pdb(agent: AgentContext) -> dict[str, Any]:
    """``NAME-web``: keep one web pod through voluntary disruptions when there are several."""
    replicas = 0 if agent.suspended else agent.spec.web.replicas
    budget: dict[str, Any] = {"minAvailable": 1} if replicas > 1 else {"maxUnavailable": 1}
    return {
        "apiVersion": agent.pdb_api_version,
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(agent, child_names(agent.name).web_pdb, WEB),
        "spec": {**budget, "selector": {"matchLabels": selector_labels(agent.name, WEB)}},
    }


def build_service_monitor(agent: AgentContext) -> dict[str, Any] | None:
    """``NAME-web``: Prometheus scrapes ``/metrics`` of the web pods (port ``http``) and of the
    workers (port ``metrics``); ``None`` without the CRD."""
    if not agent.has_service_monitor_crd:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": object_meta(agent, child_names(agent.name).service_monitor, WEB),
        "spec": {
            "selector": {"matchLabels": {LABEL_NAME: APP_NAME, LABEL_INSTANCE: agent.name}},
            "namespaceSelector": {"matchNames": [agent.namespace]},
            # Each endpoint matches the Services that have a port of that name.
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": "30s"},
                {"port": "metrics", "path": "/metrics", "interval": "30s"},
            ],
        },
    }
