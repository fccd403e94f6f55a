"""The parts of a reconciliation, in the order a pass runs them.

Each part is a module with ``async def ensure(p: Pass) -> None``: it does its work and records
what it found in ``p.outcome`` (a condition, status fields) or on ``p`` for the parts after it.

- :data:`PREREQUISITES` must succeed before anything else is applied: their errors
  (:class:`~whatsapp_operator.errors.ReleasedError`,
  :class:`~whatsapp_operator.reconcile.inputs.MissingInput`) block the agent with
  ``Ready=False``.
- :data:`PARTS` each own a condition and never block the others: a failure sets their condition
  to ``False`` and makes the pass retry (``p.outcome.fail``).
- :data:`CHECKS` run on the per-agent timer, between passes.

A new part is a module here, an entry in one of the tuples and, when it owns a condition, that
condition's type in :data:`whatsapp_operator.status.PARTS` (which ``Ready`` summarises).
"""

from __future__ import annotations

from . import (
    children,
    credentials,
    database,
    knowledge,
    meta_account,
    model,
    waba,
    webhook,
    workloads,
)
from .base import Part, Pass

#: Before anything is applied: the generated Secret, then the provisioned database.
PREREQUISITES: tuple[Part, ...] = (credentials.ensure, database.ensure)

#: Knowledge first (the pods get the vector store's id), the model, then the children, then
#: their rollout, then Meta: the account (the token works), the app's subscription to the
#: WABA, and last the webhook (Meta verifies it against the running web tier, and refuses it
#: while the app is not subscribed).
PARTS: tuple[Part, ...] = (
    knowledge.ensure,
    model.ensure,
    children.ensure,
    workloads.ensure,
    meta_account.ensure,
    waba.ensure,
    webhook.ensure,
)

#: A resume pass (the operator started) of a settled agent: the cluster's side only. Knowledge
#: calls nothing while the FAQs' hash matches; the model, the Meta account, the subscription and
#: the webhook keep what the status says until the periodic check, which the pass starts at a
#: random point of its interval (so a restarted operator does not call OpenAI and Meta for
#: every agent at once).
SETTLED_RESUME_PARTS: tuple[Part, ...] = (
    knowledge.ensure,
    children.ensure,
    workloads.ensure,
)

#: The periodic check of the outside world (:mod:`whatsapp_operator.reconcile.checks`): the
#: vector store still there, the model still served, the token still accepted, the app still
#: subscribed; what needs a rebuild is left to a full pass.
CHECKS: tuple[Part, ...] = (
    knowledge.verify,
    model.ensure,
    meta_account.ensure,
    waba.ensure,
    webhook.gate,
)

__all__ = ["CHECKS", "PARTS", "PREREQUISITES", "SETTLED_RESUME_PARTS", "Part", "Pass"]
