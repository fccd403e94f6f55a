"""Names and labels of an agent's children: the one place that knows ``NAME-web`` and friends.

Every child carries the labels of :func:`labels`; selectors (Deployments, Services,
NetworkPolicies, the PodDisruptionBudget) use the immutable subset of :func:`selector_labels`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import GROUP

#: ``app.kubernetes.io/name`` of every child of every agent.
APP_NAME = "released-agent"
PART_OF = "released"
MANAGED_BY = "released-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"

#: Pod-template annotation: checksum of the configuration and Secrets the pods use.
CONFIG_CHECKSUM_ANNOTATION = f"{GROUP}/config-checksum"

# Components (``app.kubernetes.io/component``).
WEB = "web"
WORKER = "worker"
#: The retention purge: a CronJob whose pods run ``released purge`` and exit.
PURGE = "purge"
REDIS = "redis"
#: Component of the objects that belong to the agent as a whole (ConfigMap, Secret, SA, ...).
AGENT = "agent"
#: Components of the long-running pods that run the bot (they reach Redis, Meta and OpenAI).
BOT_COMPONENTS: tuple[str, ...] = (WEB, WORKER)


@dataclass(frozen=True)
class ChildNames:
    """The names of one agent's children (all in the agent's namespace)."""

    web_deployment: str
    worker_deployment: str
    redis_deployment: str
    purge_cronjob: str
    redis_pvc: str
    web_service: str
    worker_service: str
    redis_service: str
    ingress: str
    faqs_configmap: str
    credentials_secret: str
    service_account: str
    web_network_policy: str
    worker_network_policy: str
    purge_network_policy: str
    redis_network_policy: str
    egress_network_policy: str
    web_pdb: str
    service_monitor: str

    #: What earlier versions created and this one no longer does (the Celery beat Deployment
    #: and its NetworkPolicy, replaced by the purge CronJob): removed when the agent owns them.
    retired_beat: str

    @property
    def deployments(self) -> tuple[str, ...]:
        """The three Deployments, web first."""
        return (self.web_deployment, self.worker_deployment, self.redis_deployment)


def child_names(name: str) -> ChildNames:
    """The names of the children of agent ``name`` (see DESIGN.md)."""
    return ChildNames(
        web_deployment=f"{name}-web",
        worker_deployment=f"{name}-worker",
        redis_deployment=f"{name}-redis",
        purge_cronjob=f"{name}-purge",
        redis_pvc=f"{name}-redis",
        web_service=f"{name}-web",
        worker_service=f"{name}-worker",
        redis_service=f"{name}-redis",
        ingress=name,
        faqs_configmap=f"{name}-faqs",
        credentials_secret=f"{name}-credentials",
        service_account=name,
        web_network_policy=f"{name}-web",
        worker_network_policy=f"{name}-worker",
        purge_network_policy=f"{name}-purge",
        redis_network_policy=f"{name}-redis",
        egress_network_policy=f"{name}-egress",
        web_pdb=f"{name}-web",
        service_monitor=f"{name}-web",
        retired_beat=f"{name}-beat",
    )


def selector_labels(name: str, component: str) -> dict[str, str]:
    """Labels that select agent ``name``'s pods of ``component`` (never change these)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: component,
    }


def labels(name: str, component: str) -> dict[str, str]:
    """The labels of every child of agent ``name`` (and of its pods)."""
    return {
        **selector_labels(name, component),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: PART_OF,
    }


def agent_labels(name: str) -> dict[str, str]:
    """The labels that every child of agent ``name`` carries, whatever its component."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}


_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


#: A CronJob's name is at most 52 characters: its Jobs' names add an 11-character suffix.
MAX_CRONJOB_NAME = 52


def _max_name_length() -> int:
    names = child_names("")
    services = (names.web_service, names.worker_service, names.redis_service)
    return min(63 - max(len(n) for n in services), MAX_CRONJOB_NAME - len(names.purge_cronjob))


#: The longest agent name: every Service named after the agent must still be a DNS-1035 label
#: of at most 63 characters, and the CronJob ``NAME-purge`` at most 52 (the tighter bound).
MAX_NAME_LENGTH = _max_name_length()


def validate_name(name: str) -> list[str]:
    """Problems of an agent's ``metadata.name`` as the base of its children's names: the one
    rule that the operator (``Ready=False, reason=InvalidSpec``, the admission handler) and
    ``released provision`` apply.

    The Services ``NAME-web``, ``NAME-worker`` and ``NAME-redis`` must be DNS-1035 labels (a
    letter first, at most 63 characters), the CronJob ``NAME-purge`` at most 52 characters;
    ``NAME`` is also a label value (at most 63).
    """
    if not _DNS1035_LABEL.match(name):
        return [
            f"metadata.name {name!r} cannot name the agent's Services: use lower-case letters, "
            "digits and '-', starting with a letter (no dots)"
        ]
    if len(name) > MAX_NAME_LENGTH:
        return [
            f"metadata.name {name!r} is {len(name)} characters long; at most "
            f"{MAX_NAME_LENGTH} fit in the names of its children (the CronJob NAME-purge: "
            f"{MAX_CRONJOB_NAME})"
        ]
    return []
