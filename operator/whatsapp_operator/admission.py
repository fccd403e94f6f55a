"""The validating admission webhook: refuse agents that reconciliation would refuse too.

The schema in the CRD catches what OpenAPI can express; the cross-field rules of
:func:`released.agent.validation.validate_spec` (duplicate questions, ``faqs`` *or*
``faqsFrom``, a host when the webhook is to be registered, ...) and the platform's policy
(:func:`released.agent.policy.check_policy`: Ingress hosts, classes and annotations, resource
and storage bounds; :func:`released.agent.policy.check_notify_url`: a handover notification URL
that is not https or names an internal address — names are resolved by reconciliation, which
refuses them with ``HandoverUrlRefused``) are checked here at admission time too, so
``kubectl apply`` answers at once instead of an agent turning ``Ready=False`` (``InvalidSpec``
or ``PolicyViolation``) later.

The webhook server is off unless ``RELEASED_ADMISSION_WEBHOOK`` says otherwise (reconciliation
reports the same problems anyway, so a cluster without it loses nothing but early feedback):

``RELEASED_ADMISSION_WEBHOOK``
    ``""``/``0`` (default) off; ``1``/``server``: serve HTTPS with kopf's ``WebhookServer``.
``RELEASED_ADMISSION_PORT``
    listening port (default 9443), on ``RELEASED_ADMISSION_ADDR`` (default ``0.0.0.0``).
``RELEASED_ADMISSION_HOST``
    the host name the API server uses to reach the webhook (the operator Service's DNS name);
    kopf puts it into the generated self-signed certificate.
``RELEASED_ADMISSION_CERTFILE`` / ``RELEASED_ADMISSION_KEYFILE`` / ``RELEASED_ADMISSION_CAFILE``
    a certificate and key to serve (e.g. a cert-manager Secret mounted as files) and the CA
    that signed it (its ``caBundle`` goes into the webhook configuration; without it the
    certificate itself is used). Without certificate files kopf generates a self-signed pair
    with the ``certbuilder`` package.
``RELEASED_ADMISSION_MANAGED``
    name of the ``ValidatingWebhookConfiguration`` that kopf creates and keeps up to date
    (default ``released-operator.whatsapp.released.io``; ``-`` when the chart manages it).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import kopf

from released.agent.policy import check_notify_url, check_policy
from released.agent.validation import InvalidSpec, parse_spec

from . import GROUP, PLURAL, VERSION
from .config import OperatorSettings, get_operator_settings


def admission_enabled(settings: OperatorSettings | None = None) -> bool:
    """Whether ``RELEASED_ADMISSION_WEBHOOK`` turns the webhook server on."""
    return (settings or get_operator_settings()).admission_enabled


def configure_admission(
    kopf_settings: kopf.OperatorSettings, settings: OperatorSettings | None = None
) -> bool:
    """Set kopf's ``admission`` settings from ours; returns whether the webhook is on."""
    settings = settings or get_operator_settings()
    if not settings.admission_enabled:
        return False
    certfile, pkeyfile = settings.admission_certfile, settings.admission_keyfile
    if (certfile is None or pkeyfile is None) and importlib.util.find_spec("certbuilder") is None:
        raise RuntimeError(
            "RELEASED_ADMISSION_WEBHOOK is on but no certificate is given: set "
            "RELEASED_ADMISSION_CERTFILE and RELEASED_ADMISSION_KEYFILE (e.g. from cert-manager), "
            "or install certbuilder so that kopf can make a self-signed one"
        )
    kopf_settings.admission.server = kopf.WebhookServer(
        addr=settings.admission_addr,
        port=settings.admission_port,
        host=settings.admission_host,
        certfile=certfile,
        pkeyfile=pkeyfile,
        cafile=settings.admission_cafile,
    )
    managed = settings.admission_managed
    kopf_settings.admission.managed = None if managed in ("", "-") else managed
    return True


def admission_errors(
    spec: Mapping[str, Any] | None,
    name: str | None = None,
    namespace: str | None = None,
    settings: OperatorSettings | None = None,
) -> list[str]:
    """What is wrong with ``spec`` (empty when it is acceptable).

    With ``namespace`` the platform's policy (from ``settings``) is checked too.
    """
    try:
        parsed = parse_spec(dict(spec or {}), name=name)
    except InvalidSpec as exc:
        return exc.problems
    if namespace is None:
        return []
    policy = (settings or get_operator_settings()).policy
    return check_policy(parsed, policy, namespace) + check_notify_url(parsed, policy)


def validate_agent(
    spec: Mapping[str, Any],
    name: str | None = None,
    namespace: str | None = None,
    **_: Any,
) -> None:
    """Refuse an agent whose spec breaks a rule or the platform's policy (HTTP 422, reasons)."""
    errors = admission_errors(spec, name, namespace or "")
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


def register_admission_handler(registry: Any = None) -> bool:
    """Register :func:`validate_agent` with kopf when the webhook is enabled.

    kopf refuses to start when admission handlers exist but no server is configured, so the
    handler is registered only together with the server (at import of :mod:`.handlers`).
    """
    if not admission_enabled():
        return False
    kopf.on.validate(
        GROUP,
        VERSION,
        PLURAL,
        id="validate-agent",
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )(validate_agent)
    return True
