"""The operator's own Prometheus metrics, served on ``OperatorSettings.metrics_port``.

- ``released_operator_reconciles_total{outcome}``: reconciliations by outcome (``success``,
  ``retry``, ``invalid``, ``error``).
- ``released_operator_reconcile_seconds``: how long one reconciliation took.
- ``released_operator_agents{ready}``: agents the operator knows, by their ``Ready`` status.

Liveness is kopf's own endpoint (``kopf run --liveness=http://0.0.0.0:8081/healthz``), which
answers only while the operator's event loop is alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "released_operator_reconciles_total",
    "Reconciliations of WhatsAppAgent resources, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "released_operator_reconcile_seconds",
    "Time taken by one reconciliation of a WhatsAppAgent.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
AGENTS = Gauge(
    "released_operator_agents",
    "WhatsAppAgent resources known to the operator, by their Ready condition.",
    ["ready"],
    registry=REGISTRY,
)

OUTCOMES = ("success", "retry", "invalid", "error")
for _outcome in OUTCOMES:
    RECONCILES.labels(outcome=_outcome)

_agent_ready: dict[tuple[str, str], str] = {}
_agents_lock = threading.Lock()
_server_started = False


@contextmanager
def reconcile_timer() -> Iterator[None]:
    """Observe the duration of the enclosed reconciliation."""
    start = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - start)


def count_reconcile(outcome: str) -> None:
    RECONCILES.labels(outcome=outcome).inc()


def set_agent_ready(namespace: str, name: str, ready: str | None) -> None:
    """Record an agent's Ready status (``"True"``/``"False"``/``"Unknown"``; ``None``: gone)."""
    with _agents_lock:
        if ready is None:
            _agent_ready.pop((namespace, name), None)
        else:
            _agent_ready[(namespace, name)] = ready
        counts = {"True": 0, "False": 0, "Unknown": 0}
        for value in _agent_ready.values():
            counts[value if value in counts else "Unknown"] += 1
    for value, count in counts.items():
        AGENTS.labels(ready=value).set(count)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> bool:  # noqa: S104 - in a pod
    """Serve ``/metrics`` on ``port`` once per process (``port`` 0 disables it)."""
    global _server_started
    if _server_started or port <= 0:
        return False
    start_http_server(port, addr=addr, registry=REGISTRY)
    _server_started = True
    return True
