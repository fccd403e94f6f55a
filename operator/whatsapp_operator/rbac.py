"""The RBAC rules the operator needs, as data: the Helm chart's roles must grant these.

``docs/rbac.md`` explains each rule; chart tests compare the rendered roles with these lists.
Two scopes (the chart's ``rbac.scope``):

- ``cluster``: one ClusterRole with :data:`RBAC_RULES` (:data:`CLUSTER_RULES` plus
  :data:`NAMESPACED_RULES`), for agents in any namespace;
- ``namespaced``: a Role with :data:`NAMESPACED_RULES` in each watched namespace and a small
  ClusterRole with :data:`CLUSTER_RULES` only (CRDs, namespaces, the admission webhook's
  configuration): the operator can neither read nor write a Secret outside those namespaces.

The operator watches agents cluster-wide (or in the namespaces it is given), applies their
children with server-side apply (``patch``; ``create`` for the first apply of some kinds and for
the generated credentials Secret), prunes children it no longer wants (``delete``), and watches
Secrets, ConfigMaps and Deployments to notice changes of what agents reference or run.
"""

from __future__ import annotations

from typing import TypedDict


class Rule(TypedDict):
    """One PolicyRule of a ClusterRole."""

    apiGroups: list[str]
    resources: list[str]
    verbs: list[str]


_CHILD_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]

#: What the operator needs at cluster scope in every mode: nothing that holds tenants' data.
CLUSTER_RULES: list[Rule] = [
    # kopf: discovering the custom resource; the operator: does the ServiceMonitor CRD exist?
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    # kopf: following namespaces (patterns in RELEASED_NAMESPACES).
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    # Only with the admission webhook on and managed by kopf (RELEASED_ADMISSION_WEBHOOK=1).
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingwebhookconfigurations"],
        "verbs": ["get", "list", "watch", "create", "patch", "update"],
    },
]

#: What the operator needs in each namespace whose agents it serves.
NAMESPACED_RULES: list[Rule] = [
    # The agents themselves: kopf watches them, patches finalizers and its progress annotations.
    {
        "apiGroups": ["whatsapp.released.io"],
        "resources": ["whatsappagents"],
        "verbs": ["get", "list", "watch", "patch", "update"],
    },
    {
        "apiGroups": ["whatsapp.released.io"],
        "resources": ["whatsappagents/status"],
        "verbs": ["get", "patch", "update"],
    },
    # Events on agents (kopf.info / kopf.warn), both APIs.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # Children (owned, garbage-collected with the agent).
    {
        "apiGroups": [""],
        "resources": [
            "configmaps",
            "secrets",
            "services",
            "serviceaccounts",
            "persistentvolumeclaims",
        ],
        "verbs": _CHILD_VERBS,
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _CHILD_VERBS},
    # The retention purge (its Jobs and pods are the CronJob controller's: no rights needed).
    {"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": _CHILD_VERBS},
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["ingresses", "networkpolicies"],
        "verbs": _CHILD_VERBS,
    },
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _CHILD_VERBS},
    {
        "apiGroups": ["monitoring.coreos.com"],
        "resources": ["servicemonitors"],
        "verbs": _CHILD_VERBS,
    },
]

#: The ``cluster`` scope's ClusterRole: everything, in every namespace.
RBAC_RULES: list[Rule] = CLUSTER_RULES + NAMESPACED_RULES

#: Where the admission webhook is off, this group's rule is left out of the ClusterRole.
ADMISSION_GROUP = "admissionregistration.k8s.io"


def covers(granted: list[dict[str, list[str]]], needed: list[Rule] | None = None) -> list[str]:
    """What ``granted`` (a role's rules) lacks of ``needed``: ``group/resource:verb`` items."""
    missing: list[str] = []
    for rule in needed if needed is not None else RBAC_RULES:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    if not any(
                        (group in g.get("apiGroups", []) or "*" in g.get("apiGroups", []))
                        and (resource in g.get("resources", []) or "*" in g.get("resources", []))
                        and (verb in g.get("verbs", []) or "*" in g.get("verbs", []))
                        for g in granted
                    ):
                        missing.append(f"{group or 'core'}/{resource}:{verb}")
    return missing
