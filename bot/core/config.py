"""The bot's settings, read from the environment (the operator sets the same names).

One ``Settings`` object is the single source of configuration; ``get_settings()`` caches it
per process. Secrets are ``SecretStr`` so that they never print in reprs, logs or errors.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Meta's Graph API, with the version pinned so that a Meta release cannot change our payloads.
DEFAULT_GRAPH_URL = "https://graph.facebook.com/v25.0"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


class Settings(BaseSettings):
    """Environment variables of the web tier, the worker and beat (see DESIGN.md)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    phone_number_id: str = Field(default="100000000000001", pattern=r"^[0-9]+$")
    meta_access_token: SecretStr = SecretStr("local-dev-access-token")
    meta_app_secret: SecretStr = SecretStr("local-dev-app-secret")
    meta_verify_token: SecretStr = SecretStr("local-dev-verify-token")
    #: During a credential rotation the previous verify token stays valid until pods rolled.
    meta_verify_token_previous: SecretStr | None = None
    meta_graph_url: str = DEFAULT_GRAPH_URL

    openai_api_key: SecretStr = SecretStr("local-dev-openai-key")
    openai_base_url: str = DEFAULT_OPENAI_URL
    openai_model: str = "gpt-4.1-mini"
    openai_instructions: str = "You are a helpful, concise customer-service assistant."
    openai_max_output_tokens: int = Field(default=400, ge=16, le=32000)
    openai_vector_store_id: str | None = None
    openai_rate_limit_per_second: float = Field(default=1.0, gt=0)
    openai_timeout_seconds: float = Field(default=30.0, gt=0)
    fallback_message: str = (
        "Thanks for your message! We can't answer right now; a person will get back to you soon."
    )
    language: str = "en"

    faqs_path: Path | None = None
    database_url: str = "sqlite+aiosqlite:///./released.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str | None = None

    retention_days: int = Field(default=14, ge=1)
    history_turns: int = Field(default=10, ge=0, le=100)
    graph_timeout_seconds: float = Field(default=10.0, gt=0)
    max_task_retries: int = Field(default=8, ge=0)
    #: Task retries spent waiting for the model (429/5xx/timeouts) before the bot answers from
    #: the FAQs or with ``fallback_message`` instead: the user is not kept waiting for long.
    openai_max_retries: int = Field(default=3, ge=0)
    #: Seconds before Redis redelivers an unacknowledged task (tasks are acknowledged late), so
    #: also how long a message waits when its worker was killed mid-task; longer than any task
    #: attempt and any retry countdown (countdowns are capped at half of it).
    celery_visibility_timeout: int = Field(default=600, ge=1)

    #: Where a Celery worker serves ``/metrics`` (its tasks, OpenAI and Graph API metrics);
    #: 0 turns it off. The web tier serves its own on its HTTP port.
    worker_metrics_port: int = Field(default=9808, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"  # noqa: S104 - a pod's port, reached by Prometheus

    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    @property
    def broker_url(self) -> str:
        """Celery's broker: ``CELERY_BROKER_URL`` when set, else ``REDIS_URL``."""
        return self.celery_broker_url or self.redis_url

    def secret_values(self) -> list[str]:
        """Every secret this process holds, for the log redaction filter."""
        values = [
            self.meta_access_token.get_secret_value(),
            self.meta_app_secret.get_secret_value(),
            self.meta_verify_token.get_secret_value(),
            self.openai_api_key.get_secret_value(),
        ]
        return [v for v in values if len(v) >= 6]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()``)."""
    return Settings()
