"""The inputs of one reconciliation, gathered once per pass before anything is written.

:func:`gather` parses and checks the spec, runs the :data:`PRECONDITIONS` (what the platform's
settings must allow before an agent can be reconciled at all) and the tenancy checks of
:mod:`.tenancy` (the platform's policy, the Meta Secret, the OpenAI ``baseUrl``, the ownership of
same-named objects), resolves the FAQs (inline or from the referenced ConfigMap) and reads each
Secret the bot pods use exactly once. What it reads of the tenant's objects it labels for the
label-selected watches (:func:`read_referenced`, :mod:`whatsapp_operator.watching`); what it
finds of the children (their applied-hash annotations) lets the children part skip what is
already as wanted. Whatever is
missing or wrong raises :class:`~released.agent.validation.InvalidSpec` (a person must change the
manifest) or :class:`MissingInput` (a referenced object does not exist yet), and the pass
reports it as ``Ready=False`` without touching anything.

:func:`referenced_names` lists what an agent references, for the index that re-reconciles
agents when those objects change.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from released.agent.spec import AgentSpec, Faq, parse_faqs_document
from released.agent.validation import InvalidSpec, parse_spec, validate_faqs

from ..builders import secret_fingerprint
from ..config import OperatorSettings
from ..kube import Kube
from ..openai_api import OpenAIParams
from ..watching import REFERENCED_LABEL, REFERENCED_VALUE, is_labelled
from . import tenancy
from .context import CHILDREN_SYNC_WAIT, Agent

#: Keys that the user's Secrets must hold (``spec.secrets.meta`` and ``spec.secrets.openai``).
META_KEYS = ("accessToken", "appSecret")
OPENAI_KEYS = ("apiKey",)

#: ``Ready=False`` reasons under which the parts are not meaningful: the timer neither refreshes
#: ``WorkloadsReady`` nor rotates credentials while one of them stands.
BLOCKER_REASONS = (
    frozenset(
        {"InvalidSpec", "DatabaseNotConfigured", "SecretNotFound", "FaqsNotFound", "InvalidFaqs"}
    )
    | tenancy.REASONS
)


class MissingInput(Exception):
    """A Secret, a key or a ConfigMap that the agent references does not exist (yet)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode(value: str | None) -> str | None:
    """A base64 Secret value as text (``None`` when absent or not base64-encoded UTF-8)."""
    if value is None:
        return None
    try:
        return base64.b64decode(value).decode()
    except (ValueError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------------------------------------
# preconditions: what the operator's settings must allow (checked before anything is read)

#: ``check(spec, settings)`` returns the problem that blocks the agent, or ``None``.
Precondition = Callable[[AgentSpec, OperatorSettings], InvalidSpec | None]


def database_configured(spec: AgentSpec, settings: OperatorSettings) -> InvalidSpec | None:
    """An agent without ``database.secretRef`` needs the operator's shared PostgreSQL."""
    if spec.database_secret_ref is None and settings.postgres_admin_url is None:
        return InvalidSpec(
            [
                "spec.database.secretRef is not set and the operator has no shared PostgreSQL "
                "(postgresAdminUrl in its Helm values): set one of the two"
            ],
            reason="DatabaseNotConfigured",
        )
    return None


PRECONDITIONS: tuple[Precondition, ...] = (database_configured,)


# ---------------------------------------------------------------------------------------------
# the inputs


@dataclass(frozen=True)
class Inputs:
    """What one pass reads from the cluster, once: spec, FAQs and the user's Secrets."""

    spec: AgentSpec
    faqs: tuple[Faq, ...]
    #: Secret name -> ``data`` (base64, as read) of each user Secret the bot pods use.
    secrets: Mapping[str, Mapping[str, str]]
    #: ``(kind, name)`` -> the applied-hash annotation of each child that exists (``""`` when
    #: it has none), as the ownership check found them; absent children are not in it.
    children: Mapping[tuple[str, str], str] = field(default_factory=dict)
    #: Whether the ServiceMonitor kind is served (asked once per pass).
    service_monitor: bool = False

    def value(self, secret: str, key: str) -> str | None:
        """A decoded value of one of :attr:`secrets`."""
        return decode((self.secrets.get(secret) or {}).get(key))

    @property
    def meta_access_token(self) -> str:
        return self.value(self.spec.secrets.meta.name, "accessToken") or ""

    @property
    def openai_base_url(self) -> str | None:
        """The ``baseUrl`` key of the agent's OpenAI Secret, when it has one."""
        return self.value(self.spec.secrets.openai.name, "baseUrl") or None

    def openai_params(self, settings: OperatorSettings) -> OpenAIParams:
        """How the operator reaches OpenAI for this agent (the Secret's ``baseUrl`` or the
        operator's ``openai_base_url``). A tenant's ``baseUrl`` is called through the
        policy-guarded client (:mod:`whatsapp_operator.egress`)."""
        api_key = self.value(self.spec.secrets.openai.name, "apiKey") or ""
        tenant_url = self.openai_base_url
        if tenant_url is not None and tenant_url.rstrip("/") != settings.openai_base_url.rstrip(
            "/"
        ):
            return OpenAIParams(
                api_key=SecretStr(api_key), base_url=tenant_url, policy=settings.policy
            )
        return OpenAIParams(api_key=SecretStr(api_key), base_url=settings.openai_base_url)

    def fingerprints(self) -> dict[str, str]:
        """Secret name -> :func:`~whatsapp_operator.builders.secret_fingerprint` of its data."""
        return {name: secret_fingerprint(data) for name, data in self.secrets.items()}


async def gather(agent: Agent, *, children: bool = True) -> Inputs:
    """Parse and check the spec, run the preconditions and the tenancy checks, read the FAQs
    and the Secrets; with ``children`` (a pass, not a periodic check, which applies none) also
    whether ServiceMonitors are served and which children exist (the ownership check)."""
    spec = parse_spec(agent.body.get("spec") or {}, name=agent.name)
    for precondition in PRECONDITIONS:
        problem = precondition(spec, agent.settings)
        if problem is not None:
            raise problem
    tenancy.check_policy(agent, spec)
    await tenancy.check_notify_url(agent, spec)
    if agent.watches is not None:
        agent.watches.start(agent.namespace)
    if agent.children is not None:
        await agent.children.wait_synced(agent.namespace, CHILDREN_SYNC_WAIT)
    faqs = await resolve_faqs(agent, spec)
    secrets = await read_user_secrets(agent, spec)
    inputs = Inputs(spec=spec, faqs=tuple(faqs), secrets=secrets)
    await tenancy.check_meta_secret(agent, inputs)
    await tenancy.check_openai_base_url(agent, inputs)
    if not children:
        return inputs
    service_monitor = await agent.kube.servicemonitor_crd_exists(agent.namespace)
    existing = await tenancy.check_ownership(agent, service_monitor=service_monitor)
    return Inputs(
        spec=spec,
        faqs=inputs.faqs,
        secrets=secrets,
        children=existing,
        service_monitor=service_monitor,
    )


async def read_referenced(agent: Agent, kind: str, name: str) -> dict[str, Any] | None:
    """A Secret or ConfigMap the agent references, labelled :data:`REFERENCED_LABEL` (once:
    an object that has the label is not written) and noted for the watch of its namespace;
    ``None`` when it does not exist. Read from the watch of its namespace when that holds it
    (:meth:`~whatsapp_operator.watching.ReferenceWatches.cached`), else from the API server."""
    kube, namespace = agent.kube, agent.namespace
    if agent.watches is not None:
        cached = agent.watches.cached(kind, namespace, name)
        if cached is not None:
            agent.watches.note(kind, namespace, cached)
            return cached
    obj = await kube.get("v1", kind, namespace, name)
    if obj is None:
        return None
    if not is_labelled(obj):
        patch = {"metadata": {"labels": {REFERENCED_LABEL: REFERENCED_VALUE}}}
        obj = await kube.merge_patch("v1", kind, namespace, name, patch)
    if agent.watches is not None:
        agent.watches.note(kind, namespace, obj)
    return obj


def _data(obj: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}


async def resolve_faqs(agent: Agent, spec: AgentSpec) -> list[Faq]:
    """The agent's FAQs: inline, or parsed from the referenced ConfigMap key."""
    if spec.faqs:
        return list(spec.faqs)
    if spec.faqs_from is None:
        raise InvalidSpec(["no FAQs: set spec.faqs or spec.faqsFrom"])
    ref = spec.faqs_from.config_map_key_ref
    obj = await read_referenced(agent, "ConfigMap", ref.name)
    if obj is None:
        raise MissingInput("FaqsNotFound", f"ConfigMap {ref.name!r} (spec.faqsFrom) does not exist")
    data = _data(obj)
    if ref.key not in data:
        raise MissingInput("FaqsNotFound", f"ConfigMap {ref.name!r} has no key {ref.key!r}")
    try:
        faqs = parse_faqs_document(data[ref.key])
    except ValueError as exc:
        raise InvalidSpec(
            [f"ConfigMap {ref.name!r} key {ref.key!r}: {exc}"], reason="InvalidFaqs"
        ) from None
    problems = validate_faqs(faqs, f"configmap {ref.name}/{ref.key}")
    if problems:
        raise InvalidSpec(problems, reason="InvalidFaqs")
    return faqs


async def read_user_secrets(agent: Agent, spec: AgentSpec) -> dict[str, dict[str, str]]:
    """The Meta, OpenAI, (with ``database.secretRef``) database and (with
    ``handover.notify``) notification key Secrets, each read once (together); a missing
    Secret or required key raises :class:`MissingInput`."""
    names = [spec.secrets.meta.name, spec.secrets.openai.name]
    if spec.database_secret_ref is not None:
        names.append(spec.database_secret_ref.name)
    notify = spec.notify_secret_ref
    if notify is not None:
        names.append(notify.name)
    names = list(dict.fromkeys(names))
    found = await asyncio.gather(*(read_referenced(agent, "Secret", name) for name in names))
    secrets: dict[str, dict[str, str]] = {}
    for name, obj in zip(names, found, strict=True):
        if obj is None:
            message = f"Secret {name!r} does not exist in namespace {agent.namespace!r}"
            if notify is not None and name == notify.name:
                message += (
                    f": spec.handover.notify.secretRef names it; create it with the key "
                    f"{notify.key!r} holding the HMAC key that signs handover notifications"
                )
            raise MissingInput("SecretNotFound", message)
        secrets[name] = _data(obj)
    required: list[tuple[str, str]] = []
    if spec.database_secret_ref is not None:
        required.append((spec.database_secret_ref.name, spec.database_secret_ref.key))
    required += [(spec.secrets.meta.name, key) for key in META_KEYS]
    required += [(spec.secrets.openai.name, key) for key in OPENAI_KEYS]
    if notify is not None:
        required.append((notify.name, notify.key))
    for name, key in required:
        if key not in secrets[name]:
            message = f"Secret {name!r} has no key {key!r}"
            if notify is not None and (name, key) == (notify.name, notify.key):
                message += " (spec.handover.notify.secretRef: the HMAC key of notifications)"
            raise MissingInput("SecretNotFound", message)
    return secrets


async def read_secret_key(kube: Kube, namespace: str, name: str, key: str) -> str:
    """One value of one Secret, for the work outside a pass (cleanup, rotation)."""
    data = await kube.read_secret(namespace, name)
    if data is None:
        raise MissingInput(
            "SecretNotFound", f"Secret {name!r} does not exist in namespace {namespace!r}"
        )
    value = decode(data.get(key))
    if value is None:
        raise MissingInput("SecretNotFound", f"Secret {name!r} has no key {key!r}")
    return value


async def openai_params_of(
    kube: Kube, namespace: str, spec: AgentSpec, settings: OperatorSettings
) -> OpenAIParams:
    """:meth:`Inputs.openai_params`, reading only the OpenAI Secret (cleanup)."""
    data = await kube.read_secret(namespace, spec.secrets.openai.name)
    if data is None:
        raise MissingInput(
            "SecretNotFound",
            f"Secret {spec.secrets.openai.name!r} does not exist in namespace {namespace!r}",
        )
    inputs = Inputs(spec=spec, faqs=(), secrets={spec.secrets.openai.name: data})
    if inputs.value(spec.secrets.openai.name, "apiKey") is None:
        raise MissingInput(
            "SecretNotFound", f"Secret {spec.secrets.openai.name!r} has no key 'apiKey'"
        )
    return inputs.openai_params(settings)


def referenced_names(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(kind, name)`` of every Secret and ConfigMap that a raw spec references."""
    refs: list[tuple[str, str]] = []
    secrets = spec.get("secrets") or {}
    for part in ("meta", "openai"):
        name = (secrets.get(part) or {}).get("name")
        if name:
            refs.append(("Secret", str(name)))
    db_ref = ((spec.get("database") or {}).get("secretRef") or {}).get("name")
    if db_ref:
        refs.append(("Secret", str(db_ref)))
    notify = (((spec.get("handover") or {}).get("notify") or {}).get("secretRef") or {}).get("name")
    if notify:
        refs.append(("Secret", str(notify)))
    cm_ref = ((spec.get("faqsFrom") or {}).get("configMapKeyRef") or {}).get("name")
    if cm_ref:
        refs.append(("ConfigMap", str(cm_ref)))
    tls = (spec.get("ingress") or {}).get("tlsSecretName")
    if tls:
        refs.append(("Secret", str(tls)))
    return refs
