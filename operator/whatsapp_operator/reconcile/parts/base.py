"""The state one reconciliation pass hands from part to part."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ... import status as st
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

    @property
    def vector_store_id(self) -> str | None:
        """The agent's vector store: as the knowledge part found it, else as the status says."""
        knowledge = self.outcome.fields.get("knowledge") or self.agent.status.get("knowledge")
        return (knowledge or {}).get("vectorStoreId") or None


#: A part: ``await part(p)`` does its work and records what it found in ``p.outcome``.
Part = Callable[[Pass], Awaitable[None]]
