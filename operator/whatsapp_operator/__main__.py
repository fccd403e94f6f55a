"""Run the operator: ``python -m whatsapp_operator`` or the ``released-operator`` script.

Equivalent to ``kopf run --standalone -m whatsapp_operator.handlers`` with the liveness endpoint
on ``RELEASED_HEALTH_PORT`` (``http://0.0.0.0:8081/healthz`` by default) and JSON logs when
``RELEASED_LOG_FORMAT=json`` (the default). Namespaces: ``RELEASED_NAMESPACES`` (comma-separated,
glob patterns allowed, e.g. ``clients-*``); unset or empty means all namespaces.

Standalone: one replica, no peering (the chart runs one replica with a ``Recreate`` strategy).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import kopf

from .config import get_operator_settings

NAMESPACES_ENV = "RELEASED_NAMESPACES"


def watched_namespaces(value: str | None = None) -> list[str]:
    """Namespaces (or patterns) from ``RELEASED_NAMESPACES``; empty: the whole cluster."""
    raw = os.environ.get(NAMESPACES_ENV, "") if value is None else value
    return [ns.strip() for ns in raw.split(",") if ns.strip()]


def configure_logging(log_format: str, *, verbose: bool = False) -> None:
    """kopf's logging, as JSON lines (``json``) or plain text (anything else)."""
    fmt = kopf.LogFormat.JSON if log_format.lower() == "json" else kopf.LogFormat.FULL
    kopf.configure(
        verbose=verbose, log_format=fmt, log_refkey="k8s" if fmt is kopf.LogFormat.JSON else None
    )
    # The kubernetes client logs every request at DEBUG only; keep it quiet otherwise.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> None:
    """Start the operator and block until it is stopped (SIGTERM/SIGINT)."""
    args = list(sys.argv[1:] if argv is None else argv)
    settings = get_operator_settings()
    configure_logging(settings.log_format, verbose="--verbose" in args or "-v" in args)

    from . import handlers  # registers the handlers with kopf's default registry

    namespaces = watched_namespaces()
    liveness = (
        f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port > 0 else None
    )
    handlers.logger.info(
        "starting released-operator",
        extra={"namespaces": namespaces or "all", "liveness": liveness},
    )
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )


if __name__ == "__main__":
    main()
