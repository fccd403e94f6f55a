"""The operator follows a namespace of its patterns created while kopf lists namespaces.

kopf's own namespace observer runs here, with the API server's answers scripted: its first list
finds no ``clients-*`` namespace; by the time its watch lists again, ``clients-a`` exists. kopf
alone ignored that second list (CI once waited 60 s for an agent in such a namespace);
:mod:`whatsapp_operator.namespaces` takes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import pytest
import whatsapp_operator  # noqa: F401  (installs the fix, as `kopf run -m` does)
from kopf._cogs.structs import references
from kopf._core.reactor import observation
from whatsapp_operator import namespaces

NAMESPACES = references.Resource(
    group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False
)


def namespace(name: str, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, **metadata}}


async def observe(
    monkeypatch: pytest.MonkeyPatch,
    first_list: list[dict[str, Any]],
    watch_events: list[dict[str, Any]],
) -> set[Any]:
    """Run kopf's namespace observer for ``clients-*`` against a scripted API server; return
    the namespaces it follows once the watch has delivered ``watch_events``."""

    async def fetch_objs(**_: Any) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        yield first_list, "1"

    delivered = asyncio.Event()

    async def watcher(*, processor: Callable[..., Any], **_: Any) -> None:
        for event in watch_events:
            await processor(raw_event=event)
        delivered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(observation.fetching, "fetch_objs", fetch_objs)
    monkeypatch.setattr(observation.queueing, "watcher", watcher)
    insights = references.Insights()
    await insights.backbone.fill(resources=[NAMESPACES])
    task = asyncio.create_task(
        observation.namespace_observer(
            clusterwide=False,
            namespaces=["clients-*"],
            insights=insights,
            settings=kopf.OperatorSettings(),
        )
    )
    try:
        await asyncio.wait_for(delivered.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return set(insights.namespaces)


async def test_a_namespace_created_between_the_two_lists_is_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch_list = [
        {"type": None, "object": namespace("clients-a")},
        {"type": None, "object": namespace("kube-system")},
    ]
    assert await observe(monkeypatch, [], watch_list) == {"clients-a"}


async def test_watch_events_still_add_and_remove_namespaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = namespace("clients-b", deletionTimestamp="2026-12-02T00:00:00Z")
    gone["status"] = {"phase": "Terminating"}
    events = [
        {"type": "ADDED", "object": namespace("clients-c")},
        {"type": "DELETED", "object": gone},
    ]
    followed = await observe(monkeypatch, [namespace("clients-b")], events)
    assert followed == {"clients-c"}


def test_the_fix_is_what_kopf_runs() -> None:
    assert (
        observation.process_discovered_namespace_event
        is namespaces.process_discovered_namespace_event
    )
