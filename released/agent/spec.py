"""The typed ``WhatsAppAgent`` spec: pydantic models that mirror ``crds/whatsappagent.yaml``.

Field names are snake_case in Python and camelCase (the CRD's names) on the wire; both are
accepted when parsing. Defaults are identical to the CRD's (a unit test compares them), so an
agent parsed from a dict that the API server did not default (an admission review, a test)
behaves like a stored one. Constraints repeat the schema's, so ``AgentSpec.from_resource`` rejects
what the API server would; cross-field rules live in :mod:`released.agent.validation`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from released.providers import openai as _openai
from released.providers.openai import ReasoningEffort, Verbosity

#: A DNS-1123 subdomain (names of Secrets, ConfigMaps, hosts), as in the CRD.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A ConfigMap/Secret data key.
DATA_KEY = r"^[-._a-zA-Z0-9]+$"
#: A storage size for the Redis volume.
STORAGE = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
#: A duration such as ``30s``, ``12h`` or ``60d``.
DURATION = r"^[0-9]+(s|m|h|d)$"

#: The default model: a current low-cost model with no announced shutdown (one place:
#: :data:`released.providers.openai.DEFAULT_MODEL`, which the bot's default is too).
DEFAULT_MODEL = _openai.DEFAULT_MODEL
DEFAULT_ROTATION_INTERVAL = "60d"
#: How long a conversation a person took over stays held by default (``handover.holdDuration``).
DEFAULT_HOLD_DURATION = "24h"
#: A language tag, as ``assistant.language`` (``en``, ``pt-BR``): the keys of ``handover.phrases``.
LANGUAGE_TAG = r"^[a-z]{2}(-[A-Z]{2})?$"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(DURATION)


def parse_duration(value: str) -> timedelta:
    """Parse a rotation interval such as ``"60d"``, ``"12h"``, ``"30m"`` or ``"45s"``.

    Raises ``ValueError`` for anything else (the CRD's pattern admits exactly these forms).
    """
    match = _DURATION_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"invalid duration {value!r}: use a whole number followed by s, m, h or d (e.g. 60d)"
        )
    number, unit = value.strip()[:-1], match.group(1)
    return timedelta(seconds=int(number) * _UNITS[unit])


class _Model(BaseModel):
    """Base of every spec model: camelCase aliases, frozen, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
    )


Quantity = str | int


class Faq(_Model):
    """One question and its answer."""

    q: str = Field(min_length=1, max_length=1000)
    a: str = Field(min_length=1, max_length=4000)


class ConfigMapKeyRef(_Model):
    """A key of a ConfigMap in the agent's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=DATA_KEY)


class FaqsFrom(_Model):
    """Where to read FAQs from instead of ``spec.faqs``."""

    config_map_key_ref: ConfigMapKeyRef


class Assistant(_Model):
    """How the bot answers (``spec.assistant``)."""

    model: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
    )
    instructions: str | None = Field(default=None, max_length=8000)
    language: str = Field(default="en", pattern=LANGUAGE_TAG)
    max_output_tokens: int = Field(default=400, ge=16, le=32000)
    rate_limit_per_second: float = Field(default=1, gt=0, le=1000)
    fallback_message: str | None = Field(default=None, min_length=1, max_length=4000)
    #: ``reasoning.effort`` (unset: the bot's default, ``low``); reasoning tokens count
    #: against ``max_output_tokens``. Models that do not reason are sent none.
    reasoning_effort: ReasoningEffort | None = None
    #: ``text.verbosity`` (unset: the bot's default, ``low``).
    verbosity: Verbosity | None = None


class SecretName(_Model):
    """A Secret in the agent's namespace, by name."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)


class Secrets(_Model):
    """The Secrets the agent's owners create (``spec.secrets``)."""

    meta: SecretName
    openai: SecretName


class SecretKeyRef(_Model):
    """A key of a Secret in the agent's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=DATA_KEY)


class Database(_Model):
    """``spec.database``: an existing PostgreSQL URL, or ``None`` to have one provisioned."""

    secret_ref: SecretKeyRef | None = None


class Webhook(_Model):
    """``spec.ingress.webhook``.

    The CRD field is ``register``; in Python it is ``register_override`` because ``register``
    is taken by pydantic's ``BaseModel`` (an ABC). Both names are accepted when parsing.
    """

    register_override: bool = Field(default=False, alias="register")


class Ingress(_Model):
    """``spec.ingress``: the public endpoint that Meta calls."""

    host: str | None = Field(default=None, max_length=253, pattern=DNS1123_SUBDOMAIN)
    class_name: str | None = Field(default=None, max_length=253)
    tls_secret_name: str | None = Field(default=None, max_length=253, pattern=DNS1123_SUBDOMAIN)
    annotations: dict[str, str] = Field(default_factory=dict)
    webhook: Webhook = Field(default_factory=Webhook)


class Resources(_Model):
    """A container's resource requests and limits (quantities as Kubernetes writes them)."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None

    def to_k8s(self) -> dict[str, dict[str, Quantity]]:
        """The ``resources`` of a container spec (only the parts that are set)."""
        out: dict[str, dict[str, Quantity]] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


class Web(_Model):
    """``spec.web``: the web tier."""

    replicas: int = Field(default=1, ge=0, le=20)
    resources: Resources | None = None


class Worker(_Model):
    """``spec.worker``: the Celery workers."""

    replicas: int = Field(default=1, ge=0, le=20)
    concurrency: int = Field(default=2, ge=1, le=64)
    resources: Resources | None = None


class Redis(_Model):
    """``spec.redis``: the agent's Redis."""

    storage: str = Field(default="1Gi", pattern=STORAGE)
    storage_class_name: str | None = Field(default=None, max_length=253)
    resources: Resources | None = None


class Retention(_Model):
    """``spec.retention``."""

    days: int = Field(default=14, ge=1, le=3650)


class Rotation(_Model):
    """``spec.rotation``."""

    interval: str = Field(default=DEFAULT_ROTATION_INTERVAL, pattern=DURATION)

    @property
    def interval_timedelta(self) -> timedelta:
        """The interval as a ``timedelta``."""
        return parse_duration(self.interval)


#: One phrase of ``handover.phrases`` and the list of one language (bounded: they are matched
#: against every inbound message).
Phrase = Annotated[str, Field(min_length=1, max_length=100)]
PhraseList = Annotated[list[Phrase], Field(min_length=1, max_length=50)]


class HandoverNotify(_Model):
    """``spec.handover.notify``: where the worker POSTs an HMAC-signed JSON notice of each
    handover. The URL is the platform's policy to allow (https, public addresses: see
    :func:`released.agent.policy.check_notify_url`); the Secret key holds the HMAC key."""

    url: str = Field(min_length=9, max_length=2048, pattern=r"^https://[^\s]+$")
    secret_ref: SecretKeyRef


class Handover(_Model):
    """``spec.handover``: a person can take a conversation over (its presence turns it on).

    The bot then hands a conversation to a person when the user asks for one (the model, or
    one of ``phrases``), after ``after_fallbacks`` fallback answers in a row, on an order
    (``on_order``) or when staff reply; it sends ``message`` (the bot's default when unset)
    and stays silent in that conversation for ``hold_duration`` or until released.
    """

    message: str | None = Field(default=None, min_length=1, max_length=1024)
    hold_duration: str = Field(default=DEFAULT_HOLD_DURATION, pattern=DURATION)
    after_fallbacks: int = Field(default=2, ge=0, le=20)
    on_order: bool = True
    #: Language tag -> phrases that hand over without a model call (``None``: the bot's).
    phrases: dict[str, PhraseList] | None = Field(default=None, max_length=20)
    notify: HandoverNotify | None = None

    @property
    def hold_timedelta(self) -> timedelta:
        """``hold_duration`` as a ``timedelta``."""
        return parse_duration(self.hold_duration)


class AgentSpec(_Model):
    """The spec of a ``WhatsAppAgent``."""

    phone_number_id: str = Field(pattern=r"^[0-9]{5,20}$")
    display_phone_number: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$")
    business_account_id: str | None = Field(default=None, pattern=r"^[0-9]{5,20}$")
    faqs: list[Faq] | None = Field(default=None, min_length=1, max_length=500)
    faqs_from: FaqsFrom | None = None
    assistant: Assistant = Field(default_factory=Assistant)
    secrets: Secrets
    database: Database | None = None
    ingress: Ingress | None = None
    web: Web = Field(default_factory=Web)
    worker: Worker = Field(default_factory=Worker)
    redis: Redis = Field(default_factory=Redis)
    retention: Retention = Field(default_factory=Retention)
    rotation: Rotation = Field(default_factory=Rotation)
    handover: Handover | None = None
    suspend: bool = False

    @classmethod
    def from_resource(cls, spec: Mapping[str, Any]) -> AgentSpec:
        """Parse ``body["spec"]`` of a ``WhatsAppAgent`` (raises ``pydantic.ValidationError``).

        Use :func:`released.agent.validation.parse_spec` to get an ``InvalidSpec`` with
        messages for people instead.
        """
        return cls.model_validate(dict(spec))

    def to_resource(self) -> dict[str, Any]:
        """The spec as the API server would store it (camelCase, unset optionals omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @property
    def database_secret_ref(self) -> SecretKeyRef | None:
        """The user's database URL Secret key, or ``None`` when the operator provisions one."""
        return self.database.secret_ref if self.database is not None else None

    @property
    def webhook_register(self) -> bool:
        """Whether the operator sets Meta's callback URL override (``ingress.webhook.register``)."""
        return self.ingress is not None and self.ingress.webhook.register_override

    @property
    def notify_secret_ref(self) -> SecretKeyRef | None:
        """The handover notification's HMAC key, when notifications are configured."""
        if self.handover is None or self.handover.notify is None:
            return None
        return self.handover.notify.secret_ref

    @property
    def ingress_host(self) -> str | None:
        """The public host, or ``None`` when the agent has no Ingress."""
        return self.ingress.host if self.ingress is not None else None


def parse_faqs_document(text: str) -> list[Faq]:
    """Parse FAQs from a ConfigMap value: a JSON or YAML list of ``{q, a}`` objects.

    A mapping with a top-level ``faqs`` list is accepted too. Raises ``ValueError`` with a
    message for people when the text is not such a list.
    """
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid JSON or YAML: {exc}") from exc
    if isinstance(data, dict) and "faqs" in data:
        data = data["faqs"]
    if not isinstance(data, list):
        raise ValueError("expected a list of {q, a} objects")
    faqs: list[Faq] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not {"q", "a"} <= set(item):
            raise ValueError(f"item {index}: expected an object with the keys q and a")
        q, a = item["q"], item["a"]
        if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
            raise ValueError(f"item {index}: q and a must be non-empty strings")
        faqs.append(Faq(q=q, a=a))
    if not faqs:
        raise ValueError("the list of FAQs is empty")
    return faqs


def faqs_json(faqs: list[Faq] | tuple[Faq, ...]) -> str:
    """The canonical ``faqs.json`` content: a JSON list of ``{"q", "a"}``, stable byte for byte.

    This is what the ``NAME-faqs`` ConfigMap holds, what ``FAQS_PATH`` points the bot at, and
    what the configuration checksum and the knowledge hash are computed from.
    """
    return json.dumps(
        [{"q": f.q, "a": f.a} for f in faqs], ensure_ascii=False, indent=2, sort_keys=True
    )
