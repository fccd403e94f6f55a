"""The operator's own settings, read from the environment with the prefix ``RELEASED_``.

The Helm chart sets these on the operator Deployment; tests set them in-process.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Cluster-wide settings of the operator (per-agent settings live in the spec)."""

    model_config = SettingsConfigDict(env_prefix="RELEASED_", extra="ignore")

    #: The image that runs web, worker and beat (the chart sets it to its own appVersion).
    bot_image: str = "ghcr.io/released/released:0.1.0"
    redis_image: str = "redis:7.4-alpine"
    image_pull_policy: str = "IfNotPresent"

    #: Meta's Graph API and OpenAI base URLs; tests point them at the fakes.
    graph_url: str = "https://graph.facebook.com/v23.0"
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

    #: Comma-separated namespaces or glob patterns (``clients-*``) to watch; empty: all.
    namespaces: str = ""
    #: Seconds between the per-agent timer runs (workloads, rotation).
    timer_interval: float = Field(default=60.0, gt=0)

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

    metrics_port: int = 8080
    health_port: int = 8081
    log_format: str = "json"


    @property
    def admission_enabled(self) -> bool:
        """Whether the admission webhook server runs."""
        return self.admission_webhook.strip().lower() not in ("", "0", "false", "no", "off")

    @property
    def namespace_list(self) -> list[str]:
        """The watched namespaces (or patterns); empty: the whole cluster."""
        return [ns.strip() for ns in self.namespaces.split(",") if ns.strip()]


@lru_cache(maxsize=1)
def get_operator_settings() -> OperatorSettings:
    """The process-wide operator settings (tests call ``cache_clear()``)."""
    return OperatorSettings()
