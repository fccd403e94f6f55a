"""The state one reconciliation pass hands from part to part."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ... import status as st
from ...errors import ReleasedError, redact
from ..context import Agent, Outcome
from ..inputs import Inputs


@dataclass
class Pass:
    """One reconciliation of one agent: its inputs, and what the parts found so far.

    Parts run in a fixed order (see :mod:`whatsapp_operator.reconcile.parts`); a part may use
    what an earlier one set here and records its condition and status fields in
    :attr:`outcome`.
    """

    agent: Agent
    inputs: Inputs
    outcome: Outcome = field(default_factory=Outcome)
    #: The ``NAME-credentials`` Secret's values (decoded); set by the credentials part.
    credentials: dict[str, str] = field(default_factory=dict)
    #: ``WorkloadsReady`` as read after the children were applied; set by the workloads part.
    workloads: st.Condition | None = None
    #: Whether this is the periodic check of the outside world (no registration, no rollout).
    periodic: bool = False
    #: Set by a check that found something the next full pass must rebuild (a deleted store).
    needs_reconcile: bool = False

    def current(self, type_: str) -> st.Condition | None:
        """Condition ``type_`` as this pass found it, else as the status holds it."""
        for cond in reversed(self.outcome.conditions):
            if cond.type == type_:
                return cond
        stored = st.get_condition(self.agent.status, type_)
        if stored is None:
            return None
        return st.Condition(
            type_,
            str(stored.get("status", "Unknown")),
            str(stored.get("reason", "")),
            str(stored.get("message", "")),
        )

    def changed(self, cond: st.Condition) -> bool:
        """Whether ``cond`` differs from what the status held (status, reason or message)."""
        stored = st.get_condition(self.agent.status, cond.type)
        if stored is None:
            return True
        return (stored.get("status"), stored.get("reason"), stored.get("message")) != (
            cond.status,
            cond.reason,
            redact(cond.message)[: st.MAX_MESSAGE],
        )

    def check_failed(self, type_: str, exc: ReleasedError) -> None:
        """A check could not be made (the service did not answer, or asked to wait): the
        condition keeps what the last check found (``Unknown`` with the error when there is
        none) and the pass is retried."""
        if st.get_condition(self.agent.status, type_) is None:
            self.outcome.set(st.Condition.unknown(type_, exc.reason or "Unknown", exc.message))
        self.outcome.retry_later(exc)

    @property
    def vector_store_id(self) -> str | None:
        """The agent's vector store: as the knowledge part found it, else as the status says."""
        knowledge = self.outcome.fields.get("knowledge") or self.agent.status.get("knowledge")
        return (knowledge or {}).get("vectorStoreId") or None


#: A part: ``await part(p)`` does its work and records what it found in ``p.outcome``.
Part = Callable[[Pass], Awaitable[None]]
