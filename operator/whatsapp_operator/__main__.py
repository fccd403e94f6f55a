"""Run the operator: ``python -m whatsapp_operator`` or the ``released-operator`` script.

Equivalent to::

    kopf run --standalone --all-namespaces -m whatsapp_operator.handlers \
        --liveness=http://0.0.0.0:8081/healthz --log-format=json

(``kopf run -m whatsapp_operator`` works too: the package imports its handlers.) With more
than one replica run kopf itself with ``--peering=NAME`` instead of ``--standalone``; the Helm
chart does that.

Configuration: the ``RELEASED_*`` environment variables of
:class:`~whatsapp_operator.config.OperatorSettings` (namespaces to watch, timer interval, ports,
log format, the admission webhook, the shared PostgreSQL, base URLs of Meta and OpenAI).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import kopf

from .config import get_operator_settings


def configure_logging(log_format: str, *, verbose: bool = False) -> None:
    """kopf's logging, as JSON lines (``json``) or plain text (anything else)."""
    fmt = kopf.LogFormat.JSON if log_format.lower() == "json" else kopf.LogFormat.FULL
    kopf.configure(
        verbose=verbose, log_format=fmt, log_refkey="k8s" if fmt is kopf.LogFormat.JSON else None
    )
    # The HTTP clients log every request at INFO (httpx2, under lightkube) or DEBUG; keep them
    # quiet otherwise: a line per API request is most of the operator's log and CPU at scale.
    for name in ("urllib3", "httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``released-operator`` (settings come from ``RELEASED_*``)."""
    parser = argparse.ArgumentParser(
        prog="released-operator",
        description="Reconcile WhatsAppAgent resources into running WhatsApp bots (kopf, "
        "standalone). Configure it with RELEASED_* environment variables: see "
        "whatsapp_operator.config and docs/operations.md.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return parser.parse_args(list(sys.argv[1:] if argv is None else argv))


def main(argv: Sequence[str] | None = None) -> None:
    """Start the operator and block until it is stopped (SIGTERM/SIGINT)."""
    args = parse_args(argv)
    settings = get_operator_settings()
    configure_logging(settings.log_format, verbose=args.verbose)

    from . import handlers  # registers the handlers with kopf's default registry

    namespaces = settings.namespace_list
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
