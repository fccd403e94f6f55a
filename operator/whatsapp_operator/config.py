"""The operator's own settings, read from the environment with the prefix ``RELEASED_``.

The Helm chart sets these on the operator Deployment; tests set them in-process. Lists and
mappings are JSON (``RELEASED_INGRESS_CLASSES='["nginx"]'``); the chart renders them with
``toJson``.

The tenancy settings (what reaches the cluster edge, which OpenAI base URLs an agent may use,
resource and storage bounds, NetworkPolicy peers) are the platform's decisions: a spec never
overrides them. :attr:`OperatorSettings.policy` gathers them for
:mod:`released.agent.policy`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from released.agent.policy import Policy, TierBounds
from released.providers.meta import DEFAULT_GRAPH_URL


class OperatorSettings(BaseSettings):
    """Cluster-wide settings of the operator (per-agent settings live in the spec)."""

    model_config = SettingsConfigDict(env_prefix="RELEASED_", extra="ignore")

    #: The image that runs web, worker and purge (the chart sets it to its own appVersion).
    bot_image: str = "ghcr.io/released/released:0.1.0"
    redis_image: str = "redis:7.4-alpine"
    image_pull_policy: str = "IfNotPresent"

    #: Meta's Graph API and OpenAI base URLs; tests point them at the fakes.
    graph_url: str = DEFAULT_GRAPH_URL
    openai_base_url: str = "https://api.openai.com/v1"

    #: Admin URL of the shared PostgreSQL on which agents without ``database.secretRef`` get a
    #: database and role. Unset: such agents show ``Ready=False, reason=DatabaseNotConfigured``.
    postgres_admin_url: SecretStr | None = None
    #: The host/port that *pods* use to reach that PostgreSQL (may differ from the admin URL's).
    postgres_host_for_pods: str | None = None
    #: Keep an agent's provisioned database when the agent is deleted.
    keep_databases: bool = False

    #: How many times external cleanup is tried on deletion before the finalizer is released.
    cleanup_max_attempts: int = Field(default=5, ge=1)
    #: Watch (re)connect timeouts, so the operator never goes silent on a dead connection.
    watch_server_timeout: int = 300
    watch_client_timeout: int = 330

    #: How many reconciliation passes may run at once (the others wait their turn): bounds
    #: memory and the load on the API server when many agents appear, or at start.
    concurrent_reconciles: int = Field(default=20, ge=1)

    #: Comma-separated namespaces or glob patterns (``clients-*``) to watch; empty: all.
    namespaces: str = ""
    #: Seconds between two wake-ups of an agent's timer, which works only when something is
    #: due (``reconcile.schedule``: a rollout, a check, a held count, a rotation).
    timer_interval: float = Field(default=60.0, gt=0)
    #: Seconds between two checks of an agent's outside world (model, Meta token, WABA
    #: subscription, vector store): ``reconcile.checks``, run by the timer when due.
    check_interval: float = Field(default=600.0, gt=0)
    #: Seconds between two counts of an agent's held conversations (``spec.handover``; one
    #: short query in the agent's database, as the agent's role): ``status.handover.held``.
    handover_count_interval: float = Field(default=60.0, gt=0)
    #: The platform's Meta app ID: the WABA subscription check then looks for this app among
    #: the WABA's subscribed apps (unset: any subscribed app counts).
    meta_app_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")

    #: The validating admission webhook (see :mod:`whatsapp_operator.admission`): off unless
    #: ``1``/``server``; where it listens, the host name the API server calls, certificate
    #: files (e.g. from cert-manager) and the ValidatingWebhookConfiguration kopf manages
    #: (``-``: the chart manages it).
    admission_webhook: str = ""
    admission_addr: str = "0.0.0.0"  # noqa: S104 - inside a pod
    admission_port: int = 9443
    admission_host: str | None = None
    admission_certfile: str | None = None
    admission_keyfile: str | None = None
    admission_cafile: str | None = None
    admission_managed: str = "released-operator.whatsapp.released.io"

    # -- tenancy: what an agent may ask for (docs/security.md) ---------------------------------

    #: Annotation keys (fnmatch patterns) an agent's Ingress may carry; none by default.
    ingress_annotations: list[str] = Field(default_factory=list)
    #: IngressClasses ``spec.ingress.className`` may name; none by default.
    ingress_classes: list[str] = Field(default_factory=list)
    #: The IngressClass of agents that name none (unset: the cluster's default class).
    ingress_default_class: str | None = None
    #: Host suffixes agents may claim, ``{namespace}`` expanded (``{namespace}.bots.example.com``);
    #: ``*`` allows any host. None by default: the platform must name its domain.
    ingress_host_suffixes: list[str] = Field(default_factory=list)
    #: Base URLs an agent's OpenAI Secret may name in ``baseUrl`` (besides ``openai_base_url``).
    openai_allowed_base_urls: list[str] = Field(default_factory=list)
    #: Private networks those base URLs may resolve to (an in-cluster model server).
    openai_allowed_networks: list[str] = Field(default_factory=list)
    #: Private networks an agent's handover notification URL may resolve to (a helpdesk
    #: bridge in the cluster); the worker's NetworkPolicy then lets it reach them on the URL's
    #: port. Anything public over https is allowed without it.
    handover_notify_allowed_networks: list[str] = Field(default_factory=list)
    #: The cluster's pod and Service ranges when they are public addresses (private ones are
    #: refused anyway).
    blocked_networks: list[str] = Field(default_factory=list)
    #: Per-tier bounds: ``{"web": {"max": {"cpu": "2", "memory": "2Gi"}, "maxReplicas": 5}}``.
    #: Tiers not given keep their defaults (see :class:`released.agent.policy.TierBounds`).
    resource_bounds: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: StorageClasses ``spec.redis.storageClassName`` may name; none by default.
    storage_classes: list[str] = Field(default_factory=list)
    #: The largest Redis volume an agent may ask for.
    max_redis_storage: str = "10Gi"

    #: Namespaces whose pods may reach the web tier: the ingress controller's, and Prometheus'.
    #: Selected by the ``kubernetes.io/metadata.name`` label (Kubernetes 1.21+ sets it).
    ingress_controller_namespaces: list[str] = Field(default_factory=lambda: ["ingress-nginx"])
    monitoring_namespaces: list[str] = Field(default_factory=lambda: ["monitoring"])
    #: Where bot pods may resolve names (NetworkPolicy peers; empty: port 53 anywhere).
    dns_egress_to: list[dict[str, Any]] = Field(default_factory=list)
    #: Where bot pods may reach PostgreSQL (NetworkPolicy peers; empty: the ports anywhere).
    database_egress_to: list[dict[str, Any]] = Field(default_factory=list)
    database_egress_ports: list[int] = Field(default_factory=lambda: [5432])
    #: Where bot pods may call Meta and OpenAI on 443: the internet, without private ranges.
    https_egress_cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0", "::/0"])
    https_egress_except: list[str] = Field(
        default_factory=lambda: [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "127.0.0.0/8",
            "fc00::/7",
            "fe80::/10",
        ]
    )
    #: More egress rules for bot pods, as NetworkPolicy egress rules (an in-cluster model
    #: server the platform allows, a proxy).
    extra_egress: list[dict[str, Any]] = Field(default_factory=list)

    metrics_port: int = 8080
    health_port: int = 8081
    log_format: str = "json"


    @model_validator(mode="after")
    def _policy_is_valid(self) -> OperatorSettings:
        """Bad tenancy settings stop the operator at start, not at the first agent."""
        _ = self.policy
        return self

    @property
    def policy(self) -> Policy:
        """The platform's policy for agents (:mod:`released.agent.policy`)."""
        defaults = Policy().resources
        bounds = dict(defaults)
        for tier, given in self.resource_bounds.items():
            merged = {**defaults[tier].model_dump(), **given} if tier in defaults else given
            bounds[tier] = TierBounds.model_validate(_snake_keys(merged))
        return Policy(
            ingress_annotations=tuple(self.ingress_annotations),
            ingress_classes=tuple(self.ingress_classes),
            ingress_host_suffixes=tuple(self.ingress_host_suffixes),
            openai_base_urls=tuple(self.openai_allowed_base_urls),
            openai_allowed_networks=tuple(self.openai_allowed_networks),
            notify_allowed_networks=tuple(self.handover_notify_allowed_networks),
            blocked_networks=tuple(self.blocked_networks),
            resources=bounds,
            storage_classes=tuple(self.storage_classes),
            max_redis_storage=self.max_redis_storage,
        )

    @property
    def admission_enabled(self) -> bool:
        """Whether the admission webhook server runs."""
        return self.admission_webhook.strip().lower() not in ("", "0", "false", "no", "off")

    @property
    def namespace_list(self) -> list[str]:
        """The watched namespaces (or patterns); empty: the whole cluster."""
        return [ns.strip() for ns in self.namespaces.split(",") if ns.strip()]


def _snake_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``maxReplicas`` -> ``max_replicas`` (the chart's values are camelCase)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
        out[snake] = value
    return out


@lru_cache(maxsize=1)
def get_operator_settings() -> OperatorSettings:
    """The process-wide operator settings (tests call ``cache_clear()``)."""
    return OperatorSettings()
