"""The validating admission webhook: refuse agents that reconciliation would mark ``InvalidSpec``.

The schema in the CRD catches what OpenAPI can express; the cross-field rules of
:func:`whatsapp_operator.validation.validate_spec` (duplicate questions, ``faqs`` *or*
``faqsFrom``, a host when the webhook is to be registered, ...) are checked here at admission time
too, so ``kubectl apply`` answers at once instead of an agent turning ``Ready=False`` later.

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
    certificate itself is used). Without certificate files kopf generates a self-signed pair,
    which needs the ``certbuilder`` package (not a dependency of this project): the operator
    refuses to start with the webhook on and neither.
``RELEASED_ADMISSION_MANAGED``
    name of the ``ValidatingWebhookConfiguration`` that kopf creates and keeps up to date
    (default ``released-operator.whatsapp.released.io``; ``-`` when the chart manages it).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import kopf

from . import GROUP, PLURAL, VERSION
from .validation import InvalidSpec, parse_spec

ENV_ENABLED = "RELEASED_ADMISSION_WEBHOOK"
DEFAULT_MANAGED = f"released-operator.{GROUP}"


def admission_enabled(env: Mapping[str, str] | None = None) -> bool:
    value = (env if env is not None else os.environ).get(ENV_ENABLED, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def configure_admission(
    settings: kopf.OperatorSettings, env: Mapping[str, str] | None = None
) -> bool:
    """Set ``settings.admission`` from the environment; returns whether the webhook is on."""
    env = env if env is not None else os.environ
    if not admission_enabled(env):
        return False
    certfile = env.get("RELEASED_ADMISSION_CERTFILE") or None
    pkeyfile = env.get("RELEASED_ADMISSION_KEYFILE") or None
    if (certfile is None or pkeyfile is None) and importlib.util.find_spec("certbuilder") is None:
        raise RuntimeError(
            "RELEASED_ADMISSION_WEBHOOK is on but no certificate is given: set "
            "RELEASED_ADMISSION_CERTFILE and RELEASED_ADMISSION_KEYFILE (e.g. from cert-manager), "
            "or install certbuilder so that kopf can make a self-signed one"
        )
    settings.admission.server = kopf.WebhookServer(
        addr=env.get("RELEASED_ADMISSION_ADDR", "0.0.0.0"),  # noqa: S104 - inside a pod
        port=int(env.get("RELEASED_ADMISSION_PORT", "9443")),
        host=env.get("RELEASED_ADMISSION_HOST") or None,
        certfile=certfile,
        pkeyfile=pkeyfile,
        cafile=env.get("RELEASED_ADMISSION_CAFILE") or None,
    )
    managed = env.get("RELEASED_ADMISSION_MANAGED", DEFAULT_MANAGED)
    settings.admission.managed = None if managed in ("", "-") else managed
    return True


def admission_errors(spec: Mapping[str, Any] | None, name: str | None = None) -> list[str]:
    """What is wrong with ``spec`` (empty when it is acceptable)."""
    try:
        parse_spec(dict(spec or {}), name=name)
    except InvalidSpec as exc:
        return exc.problems
    return []


def validate_agent(spec: Mapping[str, Any], name: str | None = None, **_: Any) -> None:
    """Refuse an agent whose spec breaks a cross-field rule (HTTP 422 with the reasons)."""
    errors = admission_errors(spec, name)
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
