"""What the builders are given (``AgentContext``) and the values computed around it.

Everything here is pure: checksums, generated credentials and the agent's owner reference are
functions of their arguments (``generate_credentials`` draws from ``secrets``, nothing else).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from released.agent.naming import AGENT, child_names, labels
from released.agent.spec import AgentSpec, Faq, faqs_json

from .. import GROUP, KIND, VERSION
from .. import credentials as keys
from ..config import OperatorSettings

AGENT_API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True, kw_only=True)
class AgentContext:
    """One agent as the builders see it: identity, spec, settings and resolved inputs.

    ``faqs`` are the resolved FAQs (``spec.faqs``, or the ones read from ``spec.faqsFrom``);
    ``None`` means ``spec.faqs``. ``config_checksum`` goes on the web and worker pod
    templates (see :func:`compute_checksum`); a change rolls those pods (Redis's never rolls for
    a credential: it loads new passwords live). ``openai_base_url`` is the
    ``baseUrl`` key of the agent's OpenAI Secret when it has one (``None``: the operator's
    ``openai_base_url`` setting). ``pdb_api_version`` is ``policy/v1`` from Kubernetes 1.21 on;
    pass ``policy/v1beta1`` on 1.20; so is ``cronjob_api_version`` (``batch/v1`` from 1.21,
    ``batch/v1beta1`` on 1.20).
    """

    name: str
    namespace: str
    uid: str
    spec: AgentSpec
    settings: OperatorSettings
    config_checksum: str = ""
    faqs: tuple[Faq, ...] | None = None
    vector_store_id: str | None = None
    openai_base_url: str | None = None
    has_service_monitor_crd: bool = False
    pdb_api_version: str = "policy/v1"
    cronjob_api_version: str = "batch/v1"

    @property
    def resolved_faqs(self) -> tuple[Faq, ...]:
        """The FAQs the bot gets: ``faqs`` when given, else ``spec.faqs`` (maybe empty)."""
        if self.faqs is not None:
            return self.faqs
        return tuple(self.spec.faqs or ())

    @property
    def suspended(self) -> bool:
        """``spec.suspend``: every Deployment at zero replicas (the purge still runs)."""
        return self.spec.suspend

    @classmethod
    def from_resource(
        cls, body: Mapping[str, Any], settings: OperatorSettings, **overrides: Any
    ) -> AgentContext:
        """Build from a ``WhatsAppAgent`` body (metadata + spec; raises pydantic errors).

        ``vector_store_id`` defaults to ``status.knowledge.vectorStoreId``; every other field
        can be given as a keyword (an already parsed ``spec=`` skips parsing ``body["spec"]``).
        """
        metadata = body["metadata"]
        knowledge = (body.get("status") or {}).get("knowledge") or {}
        values: dict[str, Any] = {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "settings": settings,
            "vector_store_id": knowledge.get("vectorStoreId") or None,
        }
        values.update(overrides)
        if "spec" not in values:
            values["spec"] = AgentSpec.from_resource(body["spec"])
        return cls(**values)


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """The owner reference that makes a child garbage-collected with its agent."""
    return {
        "apiVersion": AGENT_API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    agent: AgentContext,
    name: str,
    component: str,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``metadata`` of a child: name, namespace, the labels and the owner reference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": agent.namespace,
        "labels": labels(agent.name, component),
        "ownerReferences": [owner_reference(agent.name, agent.uid)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _sha256(data: Any) -> str:
    encoded = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def secret_fingerprint(data: Mapping[str, str | bytes] | None) -> str:
    """A sha256 over a Secret's keys and values (``""`` for a missing Secret).

    Give the Secret's ``data`` exactly as read (base64 strings) or decoded values, but the same
    form every time: the fingerprint is for change detection, not for comparing forms.
    """
    if data is None:
        return ""
    items = {
        key: value.decode("latin-1") if isinstance(value, bytes) else value
        for key, value in data.items()
    }
    return _sha256(items)


def compute_checksum(
    faqs: Sequence[Faq],
    secret_fingerprints: Mapping[str, str],
    extra: Mapping[str, str] | None = None,
) -> str:
    """The bot pods' configuration checksum (annotation ``whatsapp.released.io/config-checksum``).

    It covers what the pods read but the pod template does not show: the FAQ content and the
    Secrets they use (``secret_fingerprints``: Secret name -> :func:`secret_fingerprint` of its
    data, for the agent's Meta, OpenAI and ``NAME-credentials`` Secrets and the database
    Secret when ``database.secretRef`` is set). Spec fields that pods use are already in the
    template as environment variables, so changing them rolls the pods without this; changing
    anything else (replicas, ingress) leaves the checksum, and the pods, alone.
    """
    return _sha256(
        {
            "faqs": faqs_json(list(faqs)),
            "secrets": dict(sorted(secret_fingerprints.items())),
            "extra": dict(sorted((extra or {}).items())),
        }
    )


def generate_credentials() -> dict[str, str]:
    """Fresh values for a new ``NAME-credentials`` Secret: ``redisPassword``,
    ``verifyToken``, ``adminToken`` and ``safetyIdentifierSalt``, URL-safe random tokens (no
    characters that need escaping in a URL or a Redis ACL rule). The database keys are added
    when a database is provisioned. An existing Secret gets only the keys it lacks."""
    return {
        keys.REDIS_PASSWORD: secrets.token_urlsafe(32),
        keys.VERIFY_TOKEN: secrets.token_urlsafe(32),
        keys.ADMIN_TOKEN: secrets.token_urlsafe(32),
        keys.SAFETY_IDENTIFIER_SALT: secrets.token_urlsafe(32),
    }


def build_credentials_secret(
    name: str,
    namespace: str,
    values: Mapping[str, str],
    *,
    owner_uid: str | None = None,
) -> dict[str, Any]:
    """The ``NAME-credentials`` Secret of agent ``name`` holding ``values``.

    Values go in ``data`` (base64). The operator creates the Secret once with them
    (:meth:`whatsapp_operator.kube.Kube.ensure_secret` only adds keys it lacks, never changes a
    value); rotation changes and removes keys with merge patches. With ``owner_uid`` the Secret
    is owned by (and garbage-collected with) the agent.
    """
    meta: dict[str, Any] = {
        "name": child_names(name).credentials_secret,
        "namespace": namespace,
        "labels": labels(name, AGENT),
    }
    if owner_uid is not None:
        meta["ownerReferences"] = [owner_reference(name, owner_uid)]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {
            key: base64.b64encode(value.encode()).decode("ascii")
            for key, value in sorted(values.items())
        },
    }


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, str]:
    """A Secret's ``data`` (base64) as text values."""
    return {
        key: base64.b64decode(value).decode("utf-8", errors="replace")
        for key, value in (data or {}).items()
    }
