"""What every unit of the reconcile package is given, and what one pass collects.

- :class:`Agent`: the agent being handled (its body as the event delivered it) together with the
  Kubernetes API, the operator's settings and where its Events go. The kopf handlers make one per
  event; unit tests make one with an in-memory API and a list of Events.
- :class:`Outcome`: the conditions and status fields that the parts of one reconciliation
  found, and the error to retry on, written to the status at the end of the pass.
- :func:`backoff`: the retry delays of a pass that could not finish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import status as st
from ..config import OperatorSettings
from ..errors import ReleasedError, TemporaryError
from ..kube import Kube
from ..watching import ChildWatches, ReferenceWatches

#: The longest wait between two retries of a pass (seconds).
MAX_BACKOFF = 300.0
#: The longest wait before a pass that missed a referenced Secret or ConfigMap looks again
#: (an object that does not exist yet carries no label, so no watch sees it appear).
MISSING_INPUT_MAX_DELAY = 30.0
#: How long a pass waits for the first listing of its namespace's children (then it reads them).
CHILDREN_SYNC_WAIT = 15.0


def backoff(retry: int, base: float = 5.0) -> float:
    """Exponential backoff for retries: 5, 10, 20, ... seconds, at most :data:`MAX_BACKOFF`."""
    return float(min(MAX_BACKOFF, base * (2 ** max(0, retry))))


def agent_key(namespace: str, name: str) -> str:
    """``namespace/name``: how the outside world (OpenAI, PostgreSQL) names an agent."""
    return f"{namespace}/{name}"


@dataclass(frozen=True)
class Agent:
    """One ``WhatsAppAgent`` and what handling it needs."""

    body: Mapping[str, Any]
    kube: Kube
    settings: OperatorSettings
    events: st.Events
    #: The label-selected watches of referenced Secrets and ConfigMaps (``None`` in tests that
    #: do not look at them): a pass starts its namespace's and notes what it read.
    watches: ReferenceWatches | None = None
    #: The label-selected lists and watches of the children (``None``: every child is read).
    children: ChildWatches | None = None

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    @property
    def generation(self) -> int | None:
        value = self.body["metadata"].get("generation")
        return int(value) if value is not None else None

    @property
    def key(self) -> str:
        return agent_key(self.namespace, self.name)

    @property
    def status(self) -> Mapping[str, Any]:
        """The status as the event delivered it (not re-read)."""
        return self.body.get("status") or {}

    @property
    def deleting(self) -> bool:
        return bool(self.body["metadata"].get("deletionTimestamp"))


@dataclass
class Outcome:
    """What one reconciliation found, collected into the status at the end."""

    conditions: list[st.Condition] = field(default_factory=list)
    #: Status fields to set; ``None`` removes the field.
    fields: dict[str, Any] = field(default_factory=dict)
    #: The error that makes the pass retry (a temporary one wins over a permanent one).
    retry: ReleasedError | None = None

    def set(self, cond: st.Condition) -> None:
        self.conditions.append(cond)

    def fail(self, type_: str, exc: ReleasedError) -> None:
        """Condition ``type_`` is ``False`` with the error's reason; the pass will retry."""
        self.set(st.Condition.false(type_, exc.reason or "Error", exc.message))
        self.retry_later(exc)

    def retry_later(self, exc: ReleasedError) -> None:
        """The pass will retry because of ``exc`` (a temporary error wins over others)."""
        if self.retry is None or isinstance(exc, TemporaryError):
            self.retry = exc
