"""Following the namespaces of ``RELEASED_NAMESPACES`` patterns: a fix to kopf's observer.

With patterns (``clients-*``), kopf lists the namespaces once, then watches them. Its watch
starts with a list of its own, and kopf ignores that list's items (events of type ``None``) for
namespaces: a namespace created between the two lists is never followed, nor is one created
while the watch was reconnecting after it expired (each reconnection lists again). Its agents
are then never reconciled until the operator restarts, though nothing is logged. A platform
that creates a client's namespace and agent while the operator starts (an upgrade, a failover)
met exactly that; so did CI, once in a few runs.

:func:`install` makes kopf take the listed namespaces too: adding a namespace kopf follows
already changes nothing, so processing every listed item is safe. Deleted namespaces are still
noticed by their watch events. kopf keeps this in a private module (read in kopf 1.45.2, the
locked version): a kopf that no longer has it fails at import, and
``tests/unit/operator/test_namespaces.py`` fails on one that changes how it behaves, rather
than either silently bringing the gap back.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kopf._cogs.structs import bodies, references
from kopf._core.reactor import observation

_original = observation.process_discovered_namespace_event


async def process_discovered_namespace_event(
    *,
    raw_event: bodies.RawEvent,
    namespaces: Collection[references.NamespacePattern],
    insights: references.Insights,
    **kwargs: Any,
) -> None:
    """kopf's handler of a namespace event, which also takes the (re)listed namespaces."""
    if raw_event["type"] is not None:
        await _original(raw_event=raw_event, namespaces=namespaces, insights=insights, **kwargs)
        return
    async with insights.revised:
        before = set(insights.namespaces)
        observation.revise_namespaces(
            raw_events=[raw_event], insights=insights, namespaces=namespaces
        )
        if insights.namespaces != before:
            insights.revised.notify_all()


def install() -> None:
    """Put the fixed handler in kopf's observer (idempotent)."""
    observation.process_discovered_namespace_event = process_discovered_namespace_event
