"""Cross-field and semantic checks of a ``WhatsAppAgent`` spec, beyond what the CRD schema can say.

Kubernetes 1.20 has no CEL in CRDs, so rules that involve more than one field (``faqs`` or
``faqsFrom``, webhook registration needs a host, ...) live here. The admission handler refuses an
agent with problems; reconciliation reports them as ``Ready=False, reason=InvalidSpec``. Every
message names the field and says what to change.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from .naming import child_names, validate_name
from .spec import LANGUAGE_TAG, AgentSpec, Faq, Handover, Resources, parse_duration

#: ``Ready=False`` reason for a spec with problems.
REASON_INVALID_SPEC = "InvalidSpec"

MIN_ROTATION_INTERVAL = timedelta(hours=1)
MAX_ROTATION_INTERVAL = timedelta(days=3650)
#: Bounds of ``spec.handover.holdDuration``: long enough for a person to answer, short enough
#: that a forgotten conversation comes back to the bot.
MIN_HOLD_DURATION = timedelta(minutes=1)
MAX_HOLD_DURATION = timedelta(days=90)

_LANGUAGE_TAG = re.compile(LANGUAGE_TAG)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]i?|Ki)?$")
_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


class InvalidSpec(Exception):
    """An agent's spec has problems a person must fix; ``problems`` lists them one by one."""

    def __init__(self, problems: Sequence[str], reason: str = REASON_INVALID_SPEC) -> None:
        self.problems = list(problems)
        self.reason = reason
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """All problems in one line, for a condition message or an admission answer."""
        return "; ".join(self.problems)

    def __str__(self) -> str:
        return self.message


def normalize_question(question: str) -> str:
    """A question for duplicate detection: case-folded, whitespace collapsed, trailing ?!. off."""
    return " ".join(question.casefold().split()).rstrip("?!. ")


def validate_faqs(faqs: Sequence[Faq], where: str = "spec.faqs") -> list[str]:
    """Problems of a list of FAQs (from the spec or a ConfigMap): blanks and duplicates."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, faq in enumerate(faqs):
        if not faq.q.strip():
            problems.append(f"{where}[{index}].q is blank: write the question")
        if not faq.a.strip():
            problems.append(f"{where}[{index}].a is blank: write the answer")
        key = normalize_question(faq.q)
        if not key:
            continue
        if key in seen:
            problems.append(
                f"{where}[{index}].q duplicates {where}[{seen[key]}].q ({faq.q.strip()!r}): "
                "merge the two answers into one entry"
            )
        else:
            seen[key] = index
    return problems


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity (``100m``, ``1.5Gi``, ``2``) as a number; ``ValueError`` if bad."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(f"invalid quantity {value!r}")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        base = Decimal(number)
    except InvalidOperation as exc:
        raise ValueError(f"invalid quantity {value!r}") from exc
    if suffix[:1] in ("e", "E"):
        return base * (Decimal(10) ** int(suffix[1:]))
    if suffix not in _SUFFIXES:
        raise ValueError(f"invalid quantity {value!r}")
    return base * _SUFFIXES[suffix]


def _check_resources(resources: Resources | None, where: str) -> list[str]:
    if resources is None:
        return []
    problems: list[str] = []
    requests = resources.requests or {}
    limits = resources.limits or {}
    for kind, values in (("requests", requests), ("limits", limits)):
        for resource, value in values.items():
            try:
                if parse_quantity(value) < 0:
                    problems.append(f"{where}.{kind}.{resource} must not be negative")
            except ValueError:
                problems.append(f"{where}.{kind}.{resource}: {value!r} is not a quantity")
    for resource, request in requests.items():
        if resource not in limits:
            continue
        try:
            too_big = parse_quantity(request) > parse_quantity(limits[resource])
        except ValueError:
            continue
        if too_big:
            problems.append(
                f"{where}.requests.{resource} ({request}) is larger than "
                f"{where}.limits.{resource} ({limits[resource]}): lower the request "
                "or raise the limit"
            )
    return problems


def _check_dns_subdomain(value: str, where: str, what: str) -> list[str]:
    if len(value) > 253:
        return [f"{where}: {what} {value!r} is longer than 253 characters"]
    labels = value.split(".")
    if not all(_DNS_LABEL.match(label) and len(label) <= 63 for label in labels):
        return [
            f"{where}: {what} {value!r} is not a DNS-1123 name: use lower-case letters, digits "
            "and '-', dot-separated labels of at most 63 characters"
        ]
    return []


def _check_host(host: str) -> list[str]:
    where = "spec.ingress.host"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [f"{where}: {host!r} is an IP address; an Ingress needs a DNS name"]
    problems = _check_dns_subdomain(host, where, "host")
    if not problems and "." not in host:
        problems.append(
            f"{where}: {host!r} is not a fully qualified name; Meta calls the webhook on a "
            "public name such as bot.example.com"
        )
    return problems


def _check_annotation_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and _check_dns_subdomain(prefix, "", ""):
        return False
    return len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def _check_ingress(spec: AgentSpec) -> list[str]:
    ingress = spec.ingress
    if ingress is None:
        return []
    problems: list[str] = []
    if ingress.host:
        problems += _check_host(ingress.host)
    else:
        if ingress.webhook.register_override:
            problems.append(
                "spec.ingress.webhook.register needs spec.ingress.host: Meta's callback URL is "
                "https://HOST/webhook; set the host or turn registration off"
            )
        if ingress.tls_secret_name:
            problems.append(
                "spec.ingress.tlsSecretName needs spec.ingress.host: a TLS certificate is for a "
                "host; set the host or remove tlsSecretName"
            )
        if not ingress.webhook.register_override and not ingress.tls_secret_name:
            problems.append(
                "spec.ingress.host is missing: set the public host name that Meta calls "
                "(https://HOST/webhook) or remove spec.ingress"
            )
    if ingress.class_name:
        problems += _check_dns_subdomain(ingress.class_name, "spec.ingress.className", "name")
    for key in ingress.annotations:
        if not _check_annotation_key(key):
            problems.append(
                f"spec.ingress.annotations: {key!r} is not a valid annotation key "
                "(an optional DNS prefix and '/', then a name of at most 63 characters)"
            )
    return problems


def _check_handover(handover: Handover | None) -> list[str]:
    """Problems of ``spec.handover`` the schema cannot state (the URL's policy is
    :func:`released.agent.policy.check_notify_url`'s)."""
    if handover is None:
        return []
    problems: list[str] = []
    where = "spec.handover"
    if handover.message is not None and not handover.message.strip():
        problems.append(
            f"{where}.message is blank: the customer would be told nothing; write the message "
            "or remove the field to use the bot's default"
        )
    try:
        hold = parse_duration(handover.hold_duration)
    except ValueError as exc:
        problems.append(f"{where}.holdDuration: {exc}")
    else:
        if not MIN_HOLD_DURATION <= hold <= MAX_HOLD_DURATION:
            problems.append(
                f"{where}.holdDuration {handover.hold_duration} is outside 1m..90d: a person "
                "needs a minute at least, and a held conversation should come back to the bot "
                "eventually (people release it earlier with `released conversations release`)"
            )
    for language, phrases in (handover.phrases or {}).items():
        if not _LANGUAGE_TAG.match(language):
            problems.append(
                f"{where}.phrases: {language!r} is not a language tag such as 'en' or 'pt-BR'"
            )
        for index, phrase in enumerate(phrases):
            if not phrase.strip():
                problems.append(f"{where}.phrases.{language}[{index}] is blank: remove it")
    if handover.notify is not None:
        url = handover.notify.url
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError:
            problems.append(f"{where}.notify.url is not a URL: write https://host[:port]/path")
        else:
            if not parts.hostname:
                problems.append(f"{where}.notify.url has no host: write https://host[:port]/path")
    return problems


def _check_names(spec: AgentSpec, name: str) -> list[str]:
    """User-owned objects must not be the operator's own children (it would overwrite them)."""
    names = child_names(name)
    problems: list[str] = []
    owned_secrets = {names.credentials_secret}
    for field, secret in (
        ("spec.secrets.meta.name", spec.secrets.meta.name),
        ("spec.secrets.openai.name", spec.secrets.openai.name),
        (
            "spec.database.secretRef.name",
            spec.database_secret_ref and spec.database_secret_ref.name,
        ),
        (
            "spec.handover.notify.secretRef.name",
            spec.notify_secret_ref and spec.notify_secret_ref.name,
        ),
    ):
        if secret in owned_secrets:
            problems.append(
                f"{field}: {secret!r} is the Secret the operator generates for this agent; "
                "store your credentials in a Secret of another name"
            )
    if spec.faqs_from and spec.faqs_from.config_map_key_ref.name == names.faqs_configmap:
        problems.append(
            f"spec.faqsFrom.configMapKeyRef.name: {names.faqs_configmap!r} is the ConfigMap the "
            "operator writes for this agent; keep your FAQs in a ConfigMap of another name"
        )
    return problems


def validate_spec(spec: AgentSpec, *, name: str | None = None) -> list[str]:
    """Cross-field and semantic problems of ``spec``; empty when it is fine.

    With ``name`` (the agent's ``metadata.name``) the name itself is checked
    (:func:`validate_name`) and the spec against the names of the agent's own children.
    """
    problems: list[str] = []

    if spec.faqs is None and spec.faqs_from is None:
        problems.append(
            "no FAQs: give at least one {q, a} in spec.faqs, or point "
            "spec.faqsFrom.configMapKeyRef at a ConfigMap key that holds them"
        )
    elif spec.faqs is not None and spec.faqs_from is not None:
        problems.append("spec.faqs and spec.faqsFrom are both set: keep one of them")
    if spec.faqs:
        problems += validate_faqs(spec.faqs)

    if not spec.secrets.meta.name.strip():
        problems.append("spec.secrets.meta.name is empty: name the Secret with the Meta tokens")
    if not spec.secrets.openai.name.strip():
        problems.append("spec.secrets.openai.name is empty: name the Secret with the OpenAI key")

    problems += _check_ingress(spec)
    problems += _check_handover(spec.handover)

    try:
        interval = parse_duration(spec.rotation.interval)
    except ValueError as exc:
        problems.append(f"spec.rotation.interval: {exc}")
    else:
        if interval < MIN_ROTATION_INTERVAL:
            problems.append(
                f"spec.rotation.interval {spec.rotation.interval} is shorter than 1h: rotating "
                "that often restarts the bot's pods constantly; use 1h or more (e.g. 60d)"
            )
        elif interval > MAX_ROTATION_INTERVAL:
            problems.append(
                f"spec.rotation.interval {spec.rotation.interval} is longer than 3650d: use a "
                "shorter interval"
            )

    if spec.assistant.instructions is not None and not spec.assistant.instructions.strip():
        problems.append(
            "spec.assistant.instructions is blank: describe the persona or remove the field"
        )
    if spec.assistant.fallback_message is not None and not spec.assistant.fallback_message.strip():
        problems.append(
            "spec.assistant.fallbackMessage is blank: the bot would answer with nothing; "
            "write a message or remove the field"
        )

    try:
        if parse_quantity(spec.redis.storage) <= 0:
            problems.append("spec.redis.storage must be larger than 0 (e.g. 1Gi)")
    except ValueError:
        problems.append(f"spec.redis.storage: {spec.redis.storage!r} is not a size such as 1Gi")
    if spec.redis.storage_class_name:
        problems += _check_dns_subdomain(
            spec.redis.storage_class_name, "spec.redis.storageClassName", "name"
        )

    problems += _check_resources(spec.web.resources, "spec.web.resources")
    problems += _check_resources(spec.worker.resources, "spec.worker.resources")
    problems += _check_resources(spec.redis.resources, "spec.redis.resources")

    if name is not None:
        problems += validate_name(name)
        problems += _check_names(spec, name)
    return problems


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """pydantic's errors as ``spec.a.b: message`` lines with the CRD's (camelCase) field names."""
    problems: list[str] = []
    for error in exc.errors():
        path = prefix
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = "is required" if error["type"] == "missing" else error["msg"]
        problems.append(f"{path}: {message}")
    return problems


def parse_spec(raw: Mapping[str, Any], *, name: str | None = None, check: bool = True) -> AgentSpec:
    """Parse ``body["spec"]`` and (with ``check``) run :func:`validate_spec` on it.

    Raises :class:`InvalidSpec` listing every problem, schema and cross-field alike.
    """
    try:
        spec = AgentSpec.from_resource(raw)
    except ValidationError as exc:
        raise InvalidSpec(format_validation_error(exc)) from None
    if check:
        problems = validate_spec(spec, name=name)
        if problems:
            raise InvalidSpec(problems)
    return spec
