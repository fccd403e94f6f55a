"""What the operator watches and writes again: label-selected watches of the Secrets and
ConfigMaps agents reference, and children applied only when what is wanted of them changed."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from whatsapp_operator.applying import APPLIED_HASH, manifest_hash, with_applied_hash
from whatsapp_operator.kube import KubeError
from whatsapp_operator.reconcile.pipeline import reconcile
from whatsapp_operator.reconcile.references import release
from whatsapp_operator.watching import (
    CHILD_KINDS,
    REFERENCED_LABEL,
    ChildWatches,
    ReferenceWatches,
    data_digest,
)

from .conftest import NS, World, agent_body, b64, secret

SELECTOR = {REFERENCED_LABEL: "true"}


def labelled(world: World, kind: str, name: str) -> bool:
    obj = world.kube.obj(kind, NS, name)
    assert obj is not None
    return (obj["metadata"].get("labels") or {}).get(REFERENCED_LABEL) == "true"


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
async def watched(world: World) -> tuple[ReferenceWatches, list[tuple[str, str, str]]]:
    changes: list[tuple[str, str, str]] = []

    async def on_change(kind: str, namespace: str, name: str) -> None:
        changes.append((kind, namespace, name))

    watches = ReferenceWatches(world.kube, on_change, retry_delay=0.01)
    yield watches, changes
    await watches.close()


async def test_a_pass_labels_what_the_agent_references_once(world: World) -> None:
    world.kube.put(agent_body())
    world.kube.put(secret("unrelated", {"k": "v"}))
    await reconcile(world.agent(), retry=0)
    assert all(labelled(world, "Secret", name) for name in ("meta", "openai", "db"))
    assert not labelled(world, "Secret", "unrelated")
    assert sorted(w for w in world.kube.written("Secret") if w[0] == "patch") == [
        ("patch", "Secret", "db"),
        ("patch", "Secret", "meta"),
        ("patch", "Secret", "openai"),
    ]
    writes = len(world.kube.written())
    await reconcile(world.agent(), retry=0)
    assert [w for w in world.kube.written()[writes:] if w[1] == "Secret"] == []


async def test_the_watches_are_selected_by_the_label_and_report_data_changes(
    world: World, watched: tuple[ReferenceWatches, list[tuple[str, str, str]]]
) -> None:
    watches, changes = watched
    world.kube.put(agent_body())
    world.kube.put(secret("unrelated", {"k": "v"}))
    agent = dataclasses.replace(world.agent(), watches=watches)
    await reconcile(agent, retry=0)
    await settle()
    # One watch per kind in the agent's namespace, each selected by the label on the server.
    assert sorted(world.kube.watches) == [("ConfigMap", NS, SELECTOR), ("Secret", NS, SELECTOR)]
    assert watches.labelled(NS) == {("Secret", "meta"), ("Secret", "openai"), ("Secret", "db")}

    async def patch(name: str, body: dict[str, object]) -> None:
        await world.kube.merge_patch("v1", "Secret", NS, name, body)

    await patch("openai", {"metadata": {"annotations": {"note": "x"}}})  # not its data
    await patch("unrelated", {"data": {"k": b64("w")}})  # not referenced, not labelled
    await settle()
    assert changes == []
    await patch("openai", {"data": {"apiKey": b64("sk-rotated-by-a-person")}})
    await settle()
    assert changes == [("Secret", NS, "openai")]
    await world.kube.delete("v1", "Secret", NS, "db")
    await settle()
    assert changes[-1] == ("Secret", NS, "db")


async def test_a_change_between_the_read_and_the_watch_is_not_lost(
    world: World, watched: tuple[ReferenceWatches, list[tuple[str, str, str]]]
) -> None:
    """The pass notes what it read; the watch's first events are compared with that."""
    watches, changes = watched
    obj = world.kube.obj("Secret", NS, "openai")
    assert obj is not None
    watches.note("Secret", NS, obj)
    await watches.handle(
        "Secret", NS, "ADDED", {**obj, "metadata": {**obj["metadata"], "labels": SELECTOR}}
    )
    assert changes == []
    changed = {**obj, "data": {"apiKey": b64("sk-other")}}
    changed["metadata"] = {**obj["metadata"], "labels": SELECTOR}
    await watches.handle("Secret", NS, "ADDED", changed)
    await settle()
    assert changes == [("Secret", NS, "openai")]
    assert data_digest(changed) != data_digest(obj)


def secret_reads(world: World) -> int:
    """Reads of the Secrets the agent references (not of its generated credentials)."""
    return sum(world.kube.reads[("Secret", name)] for name in ("meta", "openai", "db"))


async def test_a_pass_reads_referenced_secrets_from_the_watch_once_listed(
    world: World, watched: tuple[ReferenceWatches, list[tuple[str, str, str]]]
) -> None:
    """The periodic checks of many agents cost no Secret request: the label-selected watch
    holds the referenced objects, and a change reaches the next pass."""
    watches, changes = watched
    world.kube.put(agent_body())
    agent = dataclasses.replace(world.agent(), watches=watches)
    await reconcile(agent, retry=0)
    await settle()
    first = secret_reads(world)
    assert first == 3  # before the namespace is listed, from the API server
    await reconcile(dataclasses.replace(world.agent(), watches=watches), retry=0)
    assert secret_reads(world) == first
    await world.kube.merge_patch(
        "v1", "Secret", NS, "openai", {"data": {"apiKey": b64("sk-rotated")}}
    )
    await settle()
    assert changes == [("Secret", NS, "openai")]
    cached = watches.cached("Secret", NS, "openai")
    assert cached is not None and cached["data"]["apiKey"] == b64("sk-rotated")
    assert secret_reads(world) == first


async def test_a_secret_deleted_while_the_watch_was_down_is_reported_by_the_next_listing(
    world: World, watched: tuple[ReferenceWatches, list[tuple[str, str, str]]]
) -> None:
    watches, changes = watched
    world.kube.put(agent_body())
    await reconcile(dataclasses.replace(world.agent(), watches=watches), retry=0)
    await settle()
    world.kube.end_watches(KubeError(0, "Disconnected"))
    await world.kube.delete("v1", "Secret", NS, "db")  # its DELETED event is never read
    for _ in range(50):
        await asyncio.sleep(0.01)
        if changes:
            break
    assert changes == [("Secret", NS, "db")]
    assert watches.cached("Secret", NS, "db") is None
    assert ("Secret", "db") not in watches.labelled(NS)


async def test_a_pass_that_read_other_data_than_the_watch_holds_is_followed_by_another(
    world: World, watched: tuple[ReferenceWatches, list[tuple[str, str, str]]]
) -> None:
    watches, changes = watched
    obj = world.kube.obj("Secret", NS, "openai")
    assert obj is not None
    labelled_obj = {**obj, "metadata": {**obj["metadata"], "labels": SELECTOR}}
    await watches.handle("Secret", NS, "ADDED", labelled_obj)
    watches.note("Secret", NS, {**labelled_obj, "data": {"apiKey": b64("sk-older")}})
    await settle()
    assert changes == [("Secret", NS, "openai")]


async def test_release_unlabels_what_no_agent_references_and_stops_watching(
    world: World, watched: tuple[ReferenceWatches, list[tuple[str, str, str]]]
) -> None:
    watches, changes = watched
    world.kube.put(agent_body())
    await reconcile(dataclasses.replace(world.agent(), watches=watches), retry=0)
    await settle()
    # The agent moved to another database Secret: "db" is no longer referenced.
    still = {("Secret", "meta"), ("Secret", "openai")}
    assert await release(world.kube, watches, NS, lambda: still) == [("Secret", "db")]
    assert not labelled(world, "Secret", "db") and labelled(world, "Secret", "openai")
    await settle()
    assert changes == []  # the watch's DELETED for "db" is the operator's own doing
    assert watches.watched() == {NS}
    # The last agent went: nothing is labelled any more, nothing is watched.
    assert len(await release(world.kube, watches, NS, set)) == 2
    assert watches.watched() == set()


async def test_an_unchanged_agent_is_not_applied_again(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    applied = [w for w in world.kube.written() if w[0] == "apply"]
    assert len(applied) >= 15
    world.roll_out()
    await reconcile(world.agent(), retry=0)  # WorkloadsReady changes: one status write
    writes = len(world.kube.written())
    await reconcile(world.agent(), retry=0)
    assert world.kube.written()[writes:] == []  # no apply, no status, no label
    web = world.kube.obj("Service", NS, "acme-web")
    assert web is not None and web["metadata"]["annotations"][APPLIED_HASH]


async def test_a_deleted_or_unstamped_child_is_applied_again_and_nothing_else(
    world: World,
) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    world.roll_out()
    await reconcile(world.agent(), retry=0)
    await world.kube.delete("v1", "Service", NS, "acme-web")
    ingress = world.kube.obj("Ingress", NS, "acme")
    assert ingress is not None
    del ingress["metadata"]["annotations"][APPLIED_HASH]  # edited by someone
    world.kube.put(ingress)
    writes = len(world.kube.written())
    await reconcile(world.agent(), retry=0)
    assert sorted(world.kube.written()[writes:]) == [
        ("apply", "Ingress", "acme"),
        ("apply", "Service", "acme-web"),
    ]


async def test_a_spec_change_applies_only_the_children_it_changes(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    body = world.kube.obj("WhatsAppAgent", NS, "acme")
    assert body is not None
    body["spec"]["ingress"]["host"] = "shop.bots.example.com"
    world.kube.put(body)
    writes = len(world.kube.written())
    await reconcile(world.agent(), retry=0)
    applied = {w[1:] for w in world.kube.written()[writes:] if w[0] == "apply"}
    assert ("Ingress", "acme") in applied
    assert ("Service", "acme-redis") not in applied
    assert ("ServiceAccount", "acme") not in applied


def test_the_hash_ignores_its_own_annotation_and_sees_everything_else() -> None:
    manifest = {"kind": "Service", "metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {}}
    stamped = with_applied_hash(manifest)
    assert manifest_hash(stamped) == manifest_hash(manifest)
    assert stamped["metadata"]["annotations"][APPLIED_HASH] == manifest_hash(manifest)
    assert "annotations" not in manifest["metadata"]  # the input is left alone
    other = {**manifest, "metadata": {"name": "a", "labels": {"x": "2"}}}
    assert manifest_hash(other) != manifest_hash(manifest)


# -- the children's lists and watches ------------------------------------------------------------

MANAGED = {"app.kubernetes.io/managed-by": "released-operator"}


@pytest.fixture
async def children(world: World) -> ChildWatches:
    rolled: list[tuple[str, str]] = []

    async def on_rollout(namespace: str, agent: str) -> None:
        rolled.append((namespace, agent))

    watches = ChildWatches(world.kube, on_rollout, retry_delay=0.01)
    watches.rolled = rolled  # type: ignore[attr-defined]
    yield watches
    await watches.close()


def child_reads(world: World) -> int:
    return sum(n for (kind, _), n in world.kube.reads.items() if kind not in ("Secret",))


async def test_the_children_are_listed_and_watched_by_their_label(
    world: World, children: ChildWatches
) -> None:
    world.kube.put(agent_body())
    agent = dataclasses.replace(world.agent(), children=children)
    await reconcile(agent, retry=0)
    await settle()
    assert {kind for kind, _, _ in world.kube.lists} >= {"Deployment", "Service", "Ingress"}
    assert all(labels == MANAGED for _, ns, labels in world.kube.lists if ns == NS)
    assert all(labels == MANAGED for kind, _, labels in world.kube.watches if kind == "Deployment")
    record = children.get("Deployment", NS, "acme-web")
    assert (
        record is not None
        and record.controller == world.kube.obj("WhatsAppAgent", NS, "acme")["metadata"]["uid"]
    )
    assert record.applied_hash and record.rollout is not None
    # A Deployment's change after the listing is reported, for WorkloadsReady.
    world.roll_out()
    dep = world.kube.obj("Deployment", NS, "acme-web")
    await world.kube.merge_patch("apps/v1", "Deployment", NS, "acme-web", {"status": dep["status"]})
    await settle()
    assert (NS, "acme") in children.rolled  # type: ignore[attr-defined]


async def test_a_restarted_operator_reads_no_child_of_an_unchanged_agent(world: World) -> None:
    world.kube.put(agent_body())
    await reconcile(world.agent(), retry=0)
    world.roll_out()
    await reconcile(world.agent(), retry=0)
    # A new process: nothing in memory but what its watches list.
    fresh = ChildWatches(world.kube, retry_delay=0.01)
    try:
        reads, writes = child_reads(world), len(world.kube.written())
        await reconcile(dataclasses.replace(world.agent(), children=fresh), retry=0)
        assert world.kube.written()[writes:] == []
        assert child_reads(world) - reads == 0  # known from the listing, not read one by one
    finally:
        await fresh.close()


async def test_an_object_of_a_childs_name_that_is_not_ours_is_still_refused(
    world: World, children: ChildWatches
) -> None:
    body = world.kube.put(agent_body())
    # Someone else's Service, even with the operator's labels, named like the agent's.
    world.kube.put(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "acme-web", "namespace": NS, "labels": dict(MANAGED)},
        }
    )
    world.kube.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "acme-worker", "namespace": NS},  # and one without
        }
    )
    await reconcile(dataclasses.replace(world.agent(), children=children), retry=0)
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Conflict")
    assert "Service/acme-web" in ready["message"] and "Deployment/acme-worker" in ready["message"]
    assert body["metadata"]["uid"]
    assert [w for w in world.kube.written() if w[1] not in ("WhatsAppAgent", "Secret")] == []


def break_watches(world: World, failures: list[Exception]) -> None:
    """The fake API server's watches end at once with each of ``failures`` in turn (an expired
    resourceVersion, a dropped connection...), then work again."""
    watch = world.kube.watch

    def failing(*args: Any, **kwargs: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        if failures:
            error = failures.pop(0)

            async def broken() -> AsyncIterator[tuple[str, dict[str, Any]]]:
                raise error
                yield  # pragma: no cover - makes this a generator

            return broken()
        return watch(*args, **kwargs)

    world.kube.watch = failing  # type: ignore[method-assign]


async def test_a_reference_watch_that_ends_starts_again_and_misses_no_change(
    world: World, watched: tuple[ReferenceWatches, list[tuple[str, str, str]]]
) -> None:
    watches, changes = watched
    world.kube.put(agent_body())
    break_watches(world, [KubeError(410, "Expired"), RuntimeError("connection reset")] * 2)
    agent = dataclasses.replace(world.agent(), watches=watches)
    await reconcile(agent, retry=0)  # the pass notes what it read
    await world.kube.merge_patch(
        "v1", "Secret", NS, "openai", {"data": {"apiKey": b64("sk-changed-while-down")}}
    )
    for _ in range(50):  # the watches start again after retry_delay (10 ms)
        await asyncio.sleep(0.01)
        if changes:
            break
    assert changes == [("Secret", NS, "openai")]
    assert watches.watched() == {NS}


async def test_a_child_watch_that_ends_starts_again(world: World, children: ChildWatches) -> None:
    world.kube.put(agent_body())
    agent = dataclasses.replace(world.agent(), children=children)
    await reconcile(agent, retry=0)
    await settle()
    assert children.synced(NS)
    # Every watch ends now, and each new one fails twice before one works again.
    failures: list[Exception] = [KubeError(0, "connection lost")] * (2 * len(CHILD_KINDS))
    break_watches(world, failures)
    running = len(world.kube.watches)
    world.kube.end_watches(KubeError(410, "Expired"))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not failures and len(world.kube.watches) == running + len(CHILD_KINDS):
            break
    assert not failures and len(world.kube.watches) == running + len(CHILD_KINDS)
    # The watches that started again follow the children.
    await world.kube.delete("v1", "Service", NS, "acme-web")
    await settle()
    assert children.get("Service", NS, "acme-web") is None
    assert children.get("Deployment", NS, "acme-web") is not None
