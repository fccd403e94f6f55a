"""The agent's other children: ServiceAccount, ConfigMap, PVC, Services, Ingress, policies.

NetworkPolicies (enforced where the cluster's network plugin does): the web tier admits only
the ingress controller's and the monitoring namespaces, the workers only monitoring, the purge
nothing; Redis admits only the agent's own web and worker pods and reaches nothing; those pods
reach DNS, their Redis, PostgreSQL and HTTPS on the internet without private ranges (Meta,
OpenAI), plus what the platform adds (``extra_egress``); the purge's pods reach DNS and
PostgreSQL only. The peers come from the operator's settings.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from released.agent.naming import (
    AGENT,
    APP_NAME,
    BOT_COMPONENTS,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_NAME,
    PURGE,
    REDIS,
    WEB,
    WORKER,
    child_names,
    selector_labels,
)
from released.agent.policy import notify_endpoint
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
    class_name = ingress.class_name or agent.settings.ingress_default_class
    if class_name:
        spec["ingressClassName"] = class_name
    if ingress.tls_secret_name:
        spec["tls"] = [{"hosts": [ingress.host], "secretName": ingress.tls_secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": object_meta(agent, names.ingress, WEB, annotations=ingress.annotations),
        "spec": spec,
    }


#: The label Kubernetes (1.21+) puts on every namespace with its name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _bot_pods(agent: AgentContext) -> dict[str, Any]:
    """A selector of this agent's web and worker pods."""
    return {
        "matchLabels": {LABEL_NAME: APP_NAME, LABEL_INSTANCE: agent.name},
        "matchExpressions": [
            {"key": LABEL_COMPONENT, "operator": "In", "values": list(BOT_COMPONENTS)}
        ],
    }


def _namespaces(names: list[str]) -> list[dict[str, Any]]:
    """Peers: every pod of the namespaces called ``names`` (none when empty)."""
    if not names:
        return []
    selector = {"matchExpressions": [
        {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(set(names))}
    ]}  # fmt: skip
    return [{"namespaceSelector": selector}]


def _network_policy(
    agent: AgentContext,
    name: str,
    component: str,
    pods: dict[str, Any],
    *,
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": pods, "policyTypes": []}
    if ingress is not None:
        spec["policyTypes"].append("Ingress")
        spec["ingress"] = ingress
    if egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(agent, name, component),
        "spec": spec,
    }


def build_redis_network_policy(agent: AgentContext) -> dict[str, Any]:
    """``NAME-redis``: only this agent's web and worker pods reach Redis, on 6379; Redis
    itself reaches nothing."""
    rule = {"from": [{"podSelector": _bot_pods(agent)}],
            "ports": [{"protocol": "TCP", "port": REDIS_PORT}]}  # fmt: skip
    return _network_policy(
        agent,
        child_names(agent.name).redis_network_policy,
        REDIS,
        {"matchLabels": selector_labels(agent.name, REDIS)},
        ingress=[rule],
        egress=[],
    )


def build_web_network_policy(agent: AgentContext) -> dict[str, Any]:
    """``NAME-web``: port 8000, from the ingress controller's and the monitoring namespaces."""
    settings = agent.settings
    peers = _namespaces(settings.ingress_controller_namespaces + settings.monitoring_namespaces)
    rules = [{"from": peers, "ports": [{"protocol": "TCP", "port": WEB_PORT}]}] if peers else []
    return _network_policy(
        agent,
        child_names(agent.name).web_network_policy,
        WEB,
        {"matchLabels": selector_labels(agent.name, WEB)},
        ingress=rules,
    )


def build_worker_network_policy(agent: AgentContext) -> dict[str, Any]:
    """``NAME-worker``: the workers' metrics port 9808, from the monitoring namespaces only;
    with a handover notification URL also the workers' way out to it (:func:`_notify_egress`,
    added to what ``NAME-egress`` allows web and worker)."""
    peers = _namespaces(agent.settings.monitoring_namespaces)
    port = {"protocol": "TCP", "port": WORKER_METRICS_PORT}
    notify = _notify_egress(agent)
    return _network_policy(
        agent,
        child_names(agent.name).worker_network_policy,
        WORKER,
        {"matchLabels": selector_labels(agent.name, WORKER)},
        ingress=[{"from": peers, "ports": [port]}] if peers else [],
        egress=[notify] if notify is not None else None,
    )


def _notify_egress(agent: AgentContext) -> dict[str, Any] | None:
    """The workers reach the handover notification URL's port: on the internet outside the
    private ranges (as Meta and OpenAI) and in the networks the platform allows notifications
    to reach (``handover_notify_allowed_networks``). A NetworkPolicy cannot name a host, so
    this is the port, not the host; the policy check of the URL
    (:func:`released.agent.policy.check_notify_url`) keeps the host public or allowed."""
    handover = agent.spec.handover
    if handover is None or handover.notify is None:
        return None
    _host, port = notify_endpoint(handover.notify.url)
    settings = agent.settings
    peers = _https_peers(settings.https_egress_cidrs, settings.https_egress_except)
    peers += [
        {"ipBlock": {"cidr": str(ipaddress.ip_network(n, strict=False))}}
        for n in settings.handover_notify_allowed_networks
    ]
    return {"to": peers, "ports": [{"protocol": "TCP", "port": port}]}


def build_purge_network_policy(agent: AgentContext) -> dict[str, Any]:
    """``NAME-purge``: the purge's pods serve nothing and reach only DNS and PostgreSQL."""
    return _network_policy(
        agent,
        child_names(agent.name).purge_network_policy,
        PURGE,
        {"matchLabels": selector_labels(agent.name, PURGE)},
        ingress=[],
        egress=[_dns_egress(agent), _database_egress(agent)],
    )


def _https_peers(cidrs: list[str], excluded: list[str]) -> list[dict[str, Any]]:
    """``ipBlock`` peers for ``cidrs``, each with the ``excluded`` ranges of its family that
    it contains (Kubernetes refuses an ``except`` outside its ``cidr``)."""
    peers: list[dict[str, Any]] = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        inside = [
            str(ex)
            for ex in (ipaddress.ip_network(e, strict=False) for e in excluded)
            if ex.version == network.version and ex.subnet_of(network) and ex != network  # type: ignore[arg-type]
        ]
        block: dict[str, Any] = {"cidr": str(network)}
        if inside:
            block["except"] = inside
        peers.append({"ipBlock": block})
    return peers


def _dns_egress(agent: AgentContext) -> dict[str, Any]:
    dns: dict[str, Any] = {"ports": [{"protocol": "UDP", "port": 53},
                                     {"protocol": "TCP", "port": 53}]}  # fmt: skip
    if agent.settings.dns_egress_to:
        dns["to"] = [dict(peer) for peer in agent.settings.dns_egress_to]
    return dns


def _database_egress(agent: AgentContext) -> dict[str, Any]:
    settings = agent.settings
    database: dict[str, Any] = {
        "ports": [{"protocol": "TCP", "port": port} for port in settings.database_egress_ports]
    }
    if settings.database_egress_to:
        database["to"] = [dict(peer) for peer in settings.database_egress_to]
    return database


def build_egress_network_policy(agent: AgentContext) -> dict[str, Any]:
    """``NAME-egress``: where web and worker may connect — DNS, their own Redis, PostgreSQL,
    HTTPS outside the private ranges (Meta, OpenAI) and the platform's extras."""
    settings = agent.settings
    redis = {
        "to": [{"podSelector": {"matchLabels": selector_labels(agent.name, REDIS)}}],
        "ports": [{"protocol": "TCP", "port": REDIS_PORT}],
    }
    https = {
        "to": _https_peers(settings.https_egress_cidrs, settings.https_egress_except),
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    rules = [
        _dns_egress(agent),
        redis,
        _database_egress(agent),
        https,
        *(dict(rule) for rule in settings.extra_egress),
    ]
    return _network_policy(
        agent,
        child_names(agent.name).egress_network_policy,
        AGENT,
        _bot_pods(agent),
        egress=rules,
    )


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
