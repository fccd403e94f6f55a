"""The bot's settings, read from the environment (the operator sets the same names).

One ``Settings`` object is the single source of configuration; ``get_settings()`` caches it
per process. Secrets are ``SecretStr`` so that they never print in reprs, logs or errors.

Secrets have no defaults: each tier receives only the secrets it uses (the web tier the app
secret and verify token, the worker the access token and API key), so every one is optional
here and each process names the ones it needs at startup (:meth:`Settings.require`, with
:data:`WEB_SECRETS` and :data:`WORKER_SECRETS`): a process without them refuses to start with
an error that names the variables. ``released run`` (``bot.devstack``) makes local random ones.
A secret still holding ``released provision``'s ``REPLACE_ME`` placeholder is refused wherever
it is set, and so is an app secret that is not shaped like Meta's (32 hexadecimal characters):
a guessable app secret would let anyone sign webhooks.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from released.providers.meta import DEFAULT_GRAPH_URL as DEFAULT_GRAPH_URL
from released.providers.openai import DEFAULT_MODEL, ReasoningEffort, Verbosity

#: Meta's Graph API comes with its version pinned (``released.providers.meta.GRAPH_VERSION``),
#: so that a Meta release cannot change our payloads.
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"

#: What ``released provision`` writes into the Secrets it prints, for a person to replace.
PLACEHOLDER = "REPLACE_ME"
#: Meta app secrets are 32 hexadecimal characters (the App Dashboard shows them so).
_APP_SECRET_RE = re.compile(r"^[0-9a-fA-F]{32}$")

#: The secrets each process needs (``Settings`` field names; the variables are upper case).
WEB_SECRETS = ("meta_app_secret", "meta_verify_token")
WORKER_SECRETS = ("meta_access_token", "openai_api_key")
#: Every secret setting, for validation and redaction.
_SECRET_FIELDS = (
    "meta_access_token",
    "meta_app_secret",
    "meta_verify_token",
    "meta_verify_token_previous",
    "openai_api_key",
    "safety_identifier_salt",
    "admin_token",
    "admin_token_previous",
    "handover_notify_secret",
)


class MissingSecretsError(RuntimeError):
    """A process started without secrets it needs; the message names the variables."""


class Settings(BaseSettings):
    """Environment variables of the web tier, the worker and the purge (see DESIGN.md)."""

    # hide_input_in_errors: a refused secret is never printed in the error that refuses it.
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", case_sensitive=False, hide_input_in_errors=True
    )

    phone_number_id: str = Field(default="100000000000001", pattern=r"^[0-9]+$")
    #: Secrets: no defaults (see the module doc); ``None`` until the environment sets them.
    meta_access_token: SecretStr | None = None
    meta_app_secret: SecretStr | None = None
    meta_verify_token: SecretStr | None = None
    #: During a credential rotation the previous verify token stays valid until pods rolled.
    meta_verify_token_previous: SecretStr | None = None
    meta_graph_url: str = DEFAULT_GRAPH_URL

    openai_api_key: SecretStr | None = None
    openai_base_url: str = DEFAULT_OPENAI_URL
    openai_model: str = DEFAULT_MODEL
    #: ``reasoning.effort`` (none, minimal, low, medium, high, xhigh, max; empty: the model's
    #: default). Reasoning tokens count against ``OPENAI_MAX_OUTPUT_TOKENS``, so a FAQ bot
    #: answers at ``low``. Sent only to models that reason (not to gpt-4o / gpt-4.1).
    openai_reasoning_effort: ReasoningEffort | None = "low"
    #: ``text.verbosity`` (low, medium, high; empty: the model's default). WhatsApp replies are
    #: short. Sent only to models that support it.
    openai_verbosity: Verbosity | None = "low"
    openai_instructions: str = "You are a helpful, concise customer-service assistant."
    openai_max_output_tokens: int = Field(default=400, ge=16, le=32000)
    openai_vector_store_id: str | None = None
    openai_rate_limit_per_second: float = Field(default=1.0, gt=0)
    openai_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Salt of the ``safety_identifier`` sent with each model request (an HMAC of the user's
    #: conversation, so OpenAI can tell users apart without learning who they are). Without
    #: it the OpenAI API key is the HMAC key.
    safety_identifier_salt: SecretStr | None = None
    #: Per-user fairness: each user's model answers are paced at this many per minute with
    #: bursts of ``USER_RATE_LIMIT_BURST``; answers over it wait their turn without holding a
    #: worker, so one user flooding the bot cannot delay the others' answers for long.
    user_rate_limit_per_minute: float = Field(default=6.0, gt=0)
    user_rate_limit_burst: int = Field(default=3, ge=1)
    #: A user whose backlog would wait longer than this is answered from the FAQs instead
    #: (no model call); at most half of ``CELERY_VISIBILITY_TIMEOUT`` is used.
    user_max_defer_seconds: float = Field(default=120.0, gt=0)
    #: Greeting sent when a user opens the chat for the first time (``request_welcome``);
    #: empty: a short greeting in ``LANGUAGE``.
    welcome_message: str | None = None
    #: An approved template sent instead of a free-text reply when the 24-hour
    #: customer-service window has closed (empty: such messages are recorded, not answered).
    reengagement_template: str | None = None
    #: Its language code (default: ``LANGUAGE``).
    reengagement_template_language: str | None = None
    #: While Meta refuses the agent's account (token, permission, policy), the worker probes
    #: it at most this often and holds messages meanwhile.
    meta_health_probe_seconds: float = Field(default=60.0, gt=0)
    #: What the bot says when neither the model nor the FAQs answer; empty: a default in
    #: ``LANGUAGE`` that promises a person only when ``HANDOVER_ENABLED`` (``bot.handover``).
    fallback_message: str | None = None
    language: str = "en"

    # -- handover to a person (``bot.handover``, docs/operations.md) ---------------------------
    #: Whether the bot hands conversations to people: on a user's request (phrases, the
    #: model's tool), after fallbacks in a row, on an order. Staff echoes and foreign statuses
    #: hold a conversation whatever this says: the bot never talks over a person.
    handover_enabled: bool = False
    #: What the bot sends when it hands over; empty: a default in ``LANGUAGE``.
    handover_message: str | None = None
    #: How long a hold lasts (from the event that started or renewed it).
    handover_hold_seconds: int = Field(default=86400, ge=1, le=366 * 86400)
    #: Hand over instead of sending the N-th fallback answer in a row (0: never).
    handover_after_fallbacks: int = Field(default=2, ge=0, le=100)
    #: Hand over on an order message (its reply says a person will confirm it).
    handover_on_order: bool = True
    #: Language tag -> phrases that ask for a person (JSON); matched without a model call,
    #: ignoring case and accents, as whole words. Empty: the built-in list (en, es, pt, fr).
    handover_phrases: dict[str, list[str]] | None = None
    #: Where the worker POSTs a signed JSON notification of each handover (optional).
    handover_notify_url: AnyHttpUrl | None = None
    #: The HMAC-SHA256 key of ``X-Released-Signature-256`` (required with the URL).
    handover_notify_secret: SecretStr | None = None
    #: Bearer token of the web tier's ``/admin/`` API (unset: the API answers 404).
    admin_token: SecretStr | None = None
    #: During a rotation the previous admin token is accepted too.
    admin_token_previous: SecretStr | None = None

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
    #: A file the worker touches every 10 s while its consumer and event loop run (its
    #: liveness and readiness probes check the age); unset: no heartbeat.
    worker_heartbeat_file: Path | None = None

    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    #: The largest webhook body accepted, enforced while it streams in (Meta sends up to 3 MB).
    webhook_max_body_bytes: int = Field(default=3 * 1024 * 1024, ge=3_000_000)
    #: Bytes of webhook bodies one web process holds at once; beyond it a delivery gets 503
    #: (Meta retries) instead of the process running out of memory.
    webhook_body_budget_bytes: int = Field(default=48 * 1024 * 1024, ge=3_000_000)
    #: Messages, statuses and echoes queued from one delivery; the rest are quarantined.
    webhook_max_events: int = Field(default=250, ge=1, le=10_000)

    @field_validator(*_SECRET_FIELDS, mode="after")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value().strip()
        if not secret:
            return None  # an empty variable is an unset one (and ``require`` says so)
        if PLACEHOLDER in secret:
            raise ValueError(
                f"still holds the {PLACEHOLDER} placeholder of `released provision`: "
                "put the real value in the Secret"
            )
        return value

    @field_validator("meta_app_secret", mode="after")
    @classmethod
    def _plausible_app_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _APP_SECRET_RE.match(value.get_secret_value().strip()):
            raise ValueError(
                "is not a Meta app secret (32 hexadecimal characters, from the App Dashboard "
                "under App settings > Basic)"
            )
        return value

    def require(self, *names: str) -> None:
        """Raise :class:`MissingSecretsError` naming every one of ``names`` that is unset."""
        missing = [name.upper() for name in names if getattr(self, name) is None]
        if missing:
            raise MissingSecretsError(
                f"missing secret settings: {', '.join(missing)}. Set them in the environment "
                "(the operator passes them from the agent's Secrets); there are no defaults. "
                "`released run` makes local ones for trying the bot out."
            )

    def secret(self, name: str) -> str:
        """The value of secret setting ``name`` (:class:`MissingSecretsError` when unset)."""
        self.require(name)
        value: SecretStr = getattr(self, name)
        return value.get_secret_value()

    @field_validator(
        "openai_reasoning_effort",
        "openai_verbosity",
        "welcome_message",
        "reengagement_template",
        "reengagement_template_language",
        "fallback_message",
        "handover_message",
        "handover_notify_url",
        "handover_phrases",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("handover_phrases", mode="after")
    @classmethod
    def _phrases(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is None:
            return None
        cleaned = {
            tag.strip(): [p.strip() for p in phrases if p and p.strip()]
            for tag, phrases in value.items()
            if tag.strip()
        }
        cleaned = {tag: phrases for tag, phrases in cleaned.items() if phrases}
        return cleaned or None

    @model_validator(mode="after")
    def _notify_needs_secret(self) -> Settings:
        if self.handover_notify_url is not None and self.handover_notify_secret is None:
            raise ValueError(
                "HANDOVER_NOTIFY_URL is set without HANDOVER_NOTIFY_SECRET: notifications are "
                "signed, set the secret too"
            )
        return self

    @property
    def broker_url(self) -> str:
        """Celery's broker: ``CELERY_BROKER_URL`` when set, else ``REDIS_URL``."""
        return self.celery_broker_url or self.redis_url

    def secret_values(self) -> list[str]:
        """Every secret this process holds, for the log redaction filter: the secret settings
        and the passwords inside ``REDIS_URL``, ``CELERY_BROKER_URL`` and ``DATABASE_URL``."""
        values = [
            value.get_secret_value()
            for name in _SECRET_FIELDS
            if (value := getattr(self, name)) is not None
        ]
        for url in (self.redis_url, self.celery_broker_url, self.database_url):
            password = _url_password(url)
            if password:
                values += [password, unquote(password)]
        return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def _url_password(url: str | None) -> str | None:
    """The password of a ``scheme://user:password@host`` URL as written (percent-encoded)."""
    if not url or "@" not in url:
        return None
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    userinfo = netloc.rpartition("@")[0]
    if ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()``)."""
    return Settings()
