"""The parts of a reconciliation, in the order a pass runs them.

Each part is a module with ``async def ensure(p: Pass) -> None``: it does its work and records
what it found in ``p.outcome`` (a condition, status fields) or on ``p`` for the parts after it.

- :data:`PREREQUISITES` must succeed before anything else is applied: their errors
  (:class:`~whatsapp_operator.errors.ReleasedError`,
  :class:`~whatsapp_operator.reconcile.inputs.MissingInput`) block the agent with
  ``Ready=False``.
- :data:`PARTS` each own a condition and never block the others: a failure sets their condition
  to ``False`` and makes the pass retry (``p.outcome.fail``).

A new part is a module here, an entry in one of the tuples and, when it owns a condition, that
condition's type in :data:`whatsapp_operator.status.PARTS` (which ``Ready`` summarises).
"""

from __future__ import annotations

from . import children, credentials, database, knowledge, webhook, workloads
from .base import Part, Pass

#: Before anything is applied: the generated Secret, then the provisioned database.
PREREQUISITES: tuple[Part, ...] = (credentials.ensure, database.ensure)

#: Knowledge first (the pods get the vector store's id), then the children, then their
#: rollout, then the webhook (Meta verifies it against the running web tier).
PARTS: tuple[Part, ...] = (knowledge.ensure, children.ensure, workloads.ensure, webhook.ensure)

__all__ = ["PARTS", "PREREQUISITES", "Part", "Pass"]
