"""What the platform allows a tenant's ``WhatsAppAgent`` to ask for: pure checks against a policy.

A tenant writes the spec; the platform team decides what reaches the cluster edge and what the
tenant may consume. :class:`Policy` holds the platform's decisions (the operator builds it from
its settings, i.e. the chart's values); the ``check_*`` functions return the problems of a spec,
a Secret or a URL under that policy, one message per problem, each naming the field and what
to do. The admission handler refuses an agent with problems; reconciliation reports them as
``Ready=False, reason=PolicyViolation`` and builds nothing from the refused spec.

What is decided here:

- **Ingress**: which annotation keys an agent may set (none by default; snippet annotations
  never), which IngressClasses it may name (none by default: the platform's default class),
  which hosts it may claim (a suffix per namespace such as ``{namespace}.bots.example.com``;
  none by default, ``*`` for any).
- **Resources**: per tier, which resources may be requested and up to how much (requests and
  limits), which must have a limit, how many replicas; the Redis volume's size and class.
- **OpenAI base URLs** (the ``baseUrl`` key of the agent's OpenAI Secret): only the platform's
  allowlist, only ``https``, and after DNS resolution no private, loopback, link-local,
  shared, multicast or cluster address (:func:`check_resolved_addresses`).
- **Handover notification URLs** (``spec.handover.notify.url``, called by the agent's worker
  on the tenant's behalf): the same rules as OpenAI base URLs without the prefix allowlist —
  only ``https``, no credentials in the URL, and no private, loopback, link-local, shared,
  multicast or cluster address after DNS resolution unless the platform allows that network
  (:func:`check_notify_url`, :func:`check_notify_addresses`).
- **Meta Secrets**: no ``REPLACE_ME`` placeholder, an app secret shaped like Meta's (32 hex
  characters) — a guessable app secret lets anyone sign webhooks.

Nothing here does I/O or imports kopf: the caller resolves names and reads Secrets.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .naming import REDIS, WEB, WORKER
from .provision import PLACEHOLDER
from .resources import effective_resources
from .spec import AgentSpec
from .validation import parse_quantity

#: ``Ready=False`` reason (and admission answer) for a spec the platform's policy refuses.
REASON_POLICY = "PolicyViolation"
#: ``Ready=False`` reason for a Meta Secret with a placeholder or an implausible app secret.
REASON_META_SECRET = "InvalidMetaSecret"  # noqa: S105 - a condition reason
#: ``Ready=False`` reason for an OpenAI ``baseUrl`` the policy refuses.
REASON_OPENAI_URL = "OpenAIBaseUrlRefused"
#: ``Ready=False`` reason (and admission answer) for a handover notification URL it refuses.
REASON_HANDOVER_URL = "HandoverUrlRefused"

#: Annotations that inject configuration into the ingress controller (CVE-2021-25742,
#: CVE-2023-5043 and friends): refused even when a platform's allowlist would match them.
NEVER_ALLOWED_ANNOTATIONS: tuple[str, ...] = ("*snippet*",)

#: Meta app secrets are 32 lower-case hexadecimal characters (the App Dashboard shows them so).
_APP_SECRET = re.compile(r"^[0-9a-fA-F]{32}$")

#: Address ranges a tenant-chosen URL may never reach (besides what ``ipaddress`` calls
#: private, loopback, link-local, reserved, multicast or unspecified): carrier-grade NAT and
#: the cloud metadata services.
_ALWAYS_BLOCKED: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fd00:ec2::/32"),
)


class TierBounds(BaseModel):
    """The most one container of a tier may request or be limited to.

    ``max`` maps a resource name (``cpu``, ``memory``, ``ephemeral-storage``) to the largest
    quantity allowed for both its request and its limit; resources not named there may not be
    requested at all (no ``nvidia.com/gpu`` unless the platform lists it). ``require_limits``
    names the resources whose limit must be set (memory, by default: a pod without a memory
    limit can take a node's memory). ``max_replicas`` bounds ``spec.<tier>.replicas``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max: dict[str, str] = Field(default_factory=dict)
    require_limits: tuple[str, ...] = ("memory",)
    max_replicas: int = Field(default=20, ge=0)

    @field_validator("max", mode="before")
    @classmethod
    def _quantities(cls, value: Any) -> Any:
        if isinstance(value, dict):  # YAML and JSON give numbers for "2" CPUs
            value = {str(k): str(v) for k, v in value.items()}
        for resource, quantity in value.items():
            parse_quantity(quantity)  # raises ValueError: the operator refuses to start
            if not resource:
                raise ValueError("an empty resource name")
        return value


def _default_bounds() -> dict[str, TierBounds]:
    return {
        WEB: TierBounds(max={"cpu": "2", "memory": "2Gi"}),
        WORKER: TierBounds(max={"cpu": "4", "memory": "8Gi"}),
        REDIS: TierBounds(max={"cpu": "2", "memory": "4Gi"}, max_replicas=1),
    }


class Policy(BaseModel):
    """The platform's decisions about what a tenant's agent may ask for (see the module doc).

    The defaults are the safe ones: no annotations, no IngressClass of the tenant's choosing,
    no host (the platform must name its domain), no OpenAI base URL but the platform's own,
    bounded resources and storage.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Annotation keys an agent's Ingress may carry; ``fnmatch`` patterns (``cert-manager.io/*``).
    ingress_annotations: tuple[str, ...] = ()
    #: IngressClasses an agent may name in ``spec.ingress.className``.
    ingress_classes: tuple[str, ...] = ()
    #: Host suffixes an agent may claim; ``{namespace}`` is the agent's namespace. A host must
    #: equal a suffix or end with ``.`` and a suffix. ``*`` allows any host.
    ingress_host_suffixes: tuple[str, ...] = ()
    #: Base URLs (prefixes) the ``baseUrl`` key of an agent's OpenAI Secret may use.
    openai_base_urls: tuple[str, ...] = ()
    #: Networks a tenant's OpenAI base URL may resolve to although they are private (an
    #: in-cluster model server the platform runs, for example).
    openai_allowed_networks: tuple[str, ...] = ()
    #: Networks a tenant's handover notification URL may resolve to although they are private
    #: (a helpdesk bridge inside the cluster, the tests' fakes on 127.0.0.1).
    notify_allowed_networks: tuple[str, ...] = ()
    #: More networks no tenant-chosen URL may reach: the cluster's pod and Service ranges
    #: when they are not private addresses.
    blocked_networks: tuple[str, ...] = ()
    #: Per-tier bounds (``web``, ``worker``, ``redis``).
    resources: dict[str, TierBounds] = Field(default_factory=_default_bounds)
    #: StorageClasses ``spec.redis.storageClassName`` may name (empty: only the default class).
    storage_classes: tuple[str, ...] = ()
    #: The largest Redis volume (``spec.redis.storage``).
    max_redis_storage: str = "10Gi"

    @field_validator("openai_allowed_networks", "notify_allowed_networks", "blocked_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    @field_validator("openai_base_urls")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @field_validator("max_redis_storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        parse_quantity(value)
        return value


# -- ingress --------------------------------------------------------------------------------


def host_suffixes(policy: Policy, namespace: str) -> list[str]:
    """The policy's host suffixes for ``namespace`` (``{namespace}`` expanded).

    Without a namespace the per-namespace suffixes match nothing (never ``.bots.example.com``).
    """
    return [
        suffix.replace("{namespace}", namespace).lower().strip(".")
        for suffix in policy.ingress_host_suffixes
        if namespace or "{namespace}" not in suffix
    ]


def host_allowed(host: str, policy: Policy, namespace: str) -> bool:
    """Whether ``host`` may be claimed by an agent in ``namespace``."""
    host = host.lower().rstrip(".")
    for suffix in host_suffixes(policy, namespace):
        if suffix == "*" or host == suffix or host.endswith("." + suffix):
            return True
    return False


def annotation_allowed(key: str, policy: Policy) -> bool:
    """Whether an agent's Ingress may carry annotation ``key``."""
    lowered = key.lower()
    if any(fnmatch.fnmatchcase(lowered, pattern) for pattern in NEVER_ALLOWED_ANNOTATIONS):
        return False
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in policy.ingress_annotations)


def check_ingress(spec: AgentSpec, policy: Policy, namespace: str) -> list[str]:
    """Problems of ``spec.ingress`` under ``policy`` for an agent in ``namespace``."""
    ingress = spec.ingress
    if ingress is None:
        return []
    problems: list[str] = []
    if ingress.host and not host_allowed(ingress.host, policy, namespace):
        suffixes = host_suffixes(policy, namespace)
        if suffixes:
            allowed = " or ".join(f"*.{s}" for s in suffixes)
            problems.append(
                f"spec.ingress.host {ingress.host!r} is not one this namespace may use: "
                f"choose a host under {allowed}"
            )
        else:
            problems.append(
                f"spec.ingress.host {ingress.host!r}: the platform allows no hosts yet; ask the "
                "platform team to set tenancy.ingress.hostSuffixes in the operator's Helm values"
            )
    if ingress.class_name and ingress.class_name not in policy.ingress_classes:
        if policy.ingress_classes:
            allowed = ", ".join(repr(c) for c in policy.ingress_classes)
            hint = f"use one of {allowed} or remove className"
        else:
            hint = "remove className: the platform's default IngressClass is used"
        problems.append(
            f"spec.ingress.className {ingress.class_name!r} is not allowed here: {hint}"
        )
    refused = sorted(key for key in ingress.annotations if not annotation_allowed(key, policy))
    if refused:
        if policy.ingress_annotations:
            allowed = ", ".join(repr(p) for p in policy.ingress_annotations)
            hint = f"only {allowed} may be set"
        else:
            hint = "the platform allows no Ingress annotations"
        problems.append(
            f"spec.ingress.annotations: {', '.join(repr(k) for k in refused)} not allowed "
            f"({hint}); remove them"
        )
    return problems


# -- resources and storage ------------------------------------------------------------------

_TIER_FIELDS = {WEB: "spec.web", WORKER: "spec.worker", REDIS: "spec.redis"}


def _replicas(spec: AgentSpec, tier: str) -> int:
    if tier == WEB:
        return spec.web.replicas
    if tier == WORKER:
        return spec.worker.replicas
    return 1


def _explain(spec: AgentSpec, tier: str) -> str:
    """How to fix a tier's resources: its own field, or (defaults) what drives them."""
    where = _TIER_FIELDS[tier]
    given = {WEB: spec.web.resources, WORKER: spec.worker.resources, REDIS: spec.redis.resources}
    resources = given[tier]
    if resources is not None and (resources.requests or resources.limits):
        return f"lower {where}.resources"
    if tier == WORKER:
        return (
            f"the default for spec.worker.concurrency={spec.worker.concurrency} is too large: "
            "lower the concurrency or set spec.worker.resources"
        )
    return f"set {where}.resources within the bounds"


def check_resources(spec: AgentSpec, policy: Policy) -> list[str]:
    """Problems of the agent's container resources, replicas and Redis volume under ``policy``.

    Checked on the resources the containers get (:func:`effective_resources`), so a default
    that grows with ``spec.worker.concurrency`` is bounded too.
    """
    problems: list[str] = []
    for tier, where in _TIER_FIELDS.items():
        bounds = policy.resources.get(tier)
        if bounds is None:
            continue
        replicas = _replicas(spec, tier)
        if replicas > bounds.max_replicas:
            problems.append(
                f"{where}.replicas {replicas} is more than the platform allows "
                f"({bounds.max_replicas}): lower it"
            )
        effective = effective_resources(spec, tier)
        for kind in ("requests", "limits"):
            for resource, value in sorted((effective.get(kind) or {}).items()):
                bound = bounds.max.get(resource)
                if bound is None:
                    allowed = ", ".join(sorted(bounds.max)) or "none"
                    problems.append(
                        f"{where}.resources.{kind}.{resource}: the platform does not allow "
                        f"{resource!r} for this tier (allowed: {allowed}); remove it"
                    )
                    continue
                try:
                    too_big = parse_quantity(value) > parse_quantity(bound)
                except ValueError:
                    continue  # the spec's own validation names a bad quantity
                if too_big:
                    problems.append(
                        f"{where}.resources.{kind}.{resource} {value} is more than the "
                        f"platform's maximum {bound}: {_explain(spec, tier)}"
                    )
        limits = effective.get("limits") or {}
        for resource in bounds.require_limits:
            if resource not in limits:
                bound = bounds.max.get(resource)
                upto = f" of at most {bound}" if bound else ""
                problems.append(
                    f"{where}.resources.limits.{resource} is missing: the platform requires a "
                    f"{resource} limit{upto}"
                )
    problems += check_storage(spec, policy)
    return problems


def check_storage(spec: AgentSpec, policy: Policy) -> list[str]:
    """Problems of the Redis volume's size and StorageClass under ``policy``."""
    problems: list[str] = []
    try:
        too_big = parse_quantity(spec.redis.storage) > parse_quantity(policy.max_redis_storage)
    except ValueError:
        too_big = False
    if too_big:
        problems.append(
            f"spec.redis.storage {spec.redis.storage} is more than the platform's maximum "
            f"{policy.max_redis_storage}: lower it"
        )
    storage_class = spec.redis.storage_class_name
    if storage_class and storage_class not in policy.storage_classes:
        if policy.storage_classes:
            allowed = ", ".join(repr(c) for c in policy.storage_classes)
            hint = f"use one of {allowed} or remove it"
        else:
            hint = "remove it: the cluster's default StorageClass is used"
        problems.append(
            f"spec.redis.storageClassName {storage_class!r} is not allowed here: {hint}"
        )
    return problems


def check_policy(spec: AgentSpec, policy: Policy, namespace: str) -> list[str]:
    """Every problem of ``spec`` under ``policy`` (ingress, resources, storage)."""
    return check_ingress(spec, policy, namespace) + check_resources(spec, policy)


# -- Meta Secret ----------------------------------------------------------------------------


def check_meta_secret(data: Mapping[str, str | None], secret_name: str) -> list[str]:
    """Problems of the agent's Meta Secret (decoded values); never quotes a value.

    A ``REPLACE_ME`` left from ``released provision`` or an app secret that is not 32
    hexadecimal characters is refused: the web tier would accept webhooks signed with it.
    """
    problems: list[str] = []
    for key in ("accessToken", "appSecret"):
        value = data.get(key)
        if value is not None and PLACEHOLDER in value:
            problems.append(
                f"Secret {secret_name!r} key {key!r} still holds the {PLACEHOLDER} placeholder "
                "from `released provision`: put the real value from Meta's App Dashboard"
            )
    secret = data.get("appSecret")
    if secret is not None and PLACEHOLDER not in secret and not _APP_SECRET.match(secret.strip()):
        problems.append(
            f"Secret {secret_name!r} key 'appSecret' is not a Meta app secret (32 hexadecimal "
            "characters, App Dashboard > App settings > Basic): copy it from there"
        )
    return problems


# -- OpenAI base URL ------------------------------------------------------------------------


def _same_origin_prefix(url: str, prefix: str) -> bool:
    a, b = urlsplit(url), urlsplit(prefix)
    if (a.scheme, a.hostname, a.port) != (b.scheme, b.hostname, b.port):
        return False
    path, base = a.path.rstrip("/"), b.path.rstrip("/")
    return path == base or path.startswith(base + "/")


def _networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def address_refused(
    address: str, policy: Policy, allowed: Iterable[str] | None = None
) -> str | None:
    """Why a tenant-chosen URL may not reach ``address`` (``None``: it may).

    ``allowed``: the networks the platform allows although they are internal (by default the
    OpenAI ones, :attr:`Policy.openai_allowed_networks`).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    networks = policy.openai_allowed_networks if allowed is None else allowed
    if any(ip in net for net in _networks(networks)):
        return None
    if any(ip in net for net in _networks(policy.blocked_networks)):
        return "a cluster address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local or any(ip in net for net in _ALWAYS_BLOCKED):
        return "a link-local or metadata address"
    if ip.is_private or ip.is_reserved or ip.is_unspecified or ip.is_multicast:
        return "a private or reserved address"
    if not ip.is_global:
        return "not a public address"
    return None


_NOT_A_URL, _NOT_HTTPS, _CREDENTIALS = "not a URL", "not https", "credentials"


def _https_url_host(url: str) -> tuple[str, str | None]:
    """The host of a tenant's https URL, and what is wrong with the URL if anything:
    :data:`_NOT_A_URL`, :data:`_NOT_HTTPS` (or no host) or :data:`_CREDENTIALS` (a user or
    password in it). Each caller words the problem for its own field."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        return "", _NOT_A_URL
    if parts.scheme != "https" or not host:
        return host or "", _NOT_HTTPS
    if parts.username or parts.password:
        return host, _CREDENTIALS
    return host, None


def _literal_address_refused(
    host: str, policy: Policy, allowed: Iterable[str] | None = None
) -> str | None:
    """Why an IP address written in a URL is refused (``None``: allowed, or a name, which is
    checked once resolved)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return address_refused(host, policy, allowed)


def check_openai_base_url(url: str, policy: Policy, *, default_url: str) -> list[str]:
    """Problems of a tenant's OpenAI ``baseUrl`` before resolving it (never its response).

    The platform's own ``default_url`` is always fine. Anything else must start with one of
    the policy's allowed base URLs and use ``https``; an IP address in the URL must be public
    (names are checked after resolution by :func:`check_resolved_addresses`).
    """
    field = "the 'baseUrl' key of the OpenAI Secret"
    if url.rstrip("/") == default_url.rstrip("/"):
        return []
    host, problem = _https_url_host(url)
    if problem == _NOT_A_URL:
        return [f"{field} is not a URL: remove it or use an allowed base URL"]
    if problem == _NOT_HTTPS:
        return [f"{field} must be an https:// URL: fix it or remove it to use the default"]
    if problem == _CREDENTIALS:
        return [f"{field} must not carry credentials: the key belongs in 'apiKey'"]
    if not any(_same_origin_prefix(url, prefix) for prefix in policy.openai_base_urls):
        if policy.openai_base_urls:
            allowed = ", ".join(policy.openai_base_urls)
            return [f"{field} is not an allowed base URL ({allowed}): use one of them"]
        return [
            f"{field} is set but the platform allows no other base URL than its own: remove "
            "the key, or ask the platform team to add yours to tenancy.openai.allowedBaseUrls"
        ]
    why = _literal_address_refused(host, policy)
    return [f"{field} points at {why}: use a public OpenAI-compatible endpoint"] if why else []


def check_resolved_addresses(url: str, addresses: Sequence[str], policy: Policy) -> list[str]:
    """Problems of the addresses a tenant's base URL resolved to: every one must be allowed."""
    field = "the 'baseUrl' key of the OpenAI Secret"
    if not addresses:
        return [f"{field}: its host name does not resolve; fix the URL"]
    reasons = sorted({why for why in (address_refused(a, policy) for a in addresses) if why})
    if reasons:
        return [
            f"{field} resolves to {' and '.join(reasons)}: the operator does not call internal "
            "addresses for an agent; use a public OpenAI-compatible endpoint"
        ]
    return []


# -- handover notification URL --------------------------------------------------------------

_NOTIFY_FIELD = "spec.handover.notify.url"


def notify_endpoint(url: str) -> tuple[str, int]:
    """Host and port of a notification URL (``443`` when it names none)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443


def check_notify_url(spec: AgentSpec, policy: Policy) -> list[str]:
    """Problems of ``spec.handover.notify.url`` before resolving it (never quotes the URL: such
    URLs often carry a token in their path).

    ``https`` only, no user or password in it, and an IP address in it must be one the policy
    allows (names are checked after resolution by :func:`check_notify_addresses`).
    """
    if spec.handover is None or spec.handover.notify is None:
        return []
    host, problem = _https_url_host(spec.handover.notify.url)
    if problem == _NOT_A_URL:
        return [f"{_NOTIFY_FIELD} is not a URL: write https://host[:port]/path"]
    if problem == _NOT_HTTPS:
        return [f"{_NOTIFY_FIELD} must be an https:// URL with a host"]
    if problem == _CREDENTIALS:
        return [
            f"{_NOTIFY_FIELD} must not carry a user or password: notifications are signed "
            "with the key of spec.handover.notify.secretRef"
        ]
    why = _literal_address_refused(host, policy, policy.notify_allowed_networks)
    if why:
        return [
            f"{_NOTIFY_FIELD} points at {why}: agents may notify public https endpoints only "
            "(the platform team can allow a network in tenancy.handover.notifyAllowedNetworks)"
        ]
    return []


def check_notify_addresses(addresses: Sequence[str], policy: Policy) -> list[str]:
    """Problems of the addresses the notification URL's host resolved to: all must be allowed."""
    if not addresses:
        return [f"{_NOTIFY_FIELD}: its host name does not resolve; fix the URL"]
    reasons = sorted(
        {
            why
            for why in (
                address_refused(a, policy, policy.notify_allowed_networks) for a in addresses
            )
            if why
        }
    )
    if reasons:
        return [
            f"{_NOTIFY_FIELD} resolves to {' and '.join(reasons)}: the agent's pods do not call "
            "internal addresses for a tenant; use a public https endpoint (or ask the platform "
            "team to allow the network in tenancy.handover.notifyAllowedNetworks)"
        ]
    return []
