"""The operator never adopts an object it did not create (builders.ownership)."""

from __future__ import annotations

from typing import Any

from whatsapp_operator.builders.context import owner_reference
from whatsapp_operator.builders.ownership import (
    child_refs,
    conflict_message,
    controlled_by,
    foreign_children,
)

from tests.unit.operator.test_builders import example_body, make_ctx

UID = "6778bb9c-77dd-4c69-9da5-a05489de8103"


def obj(kind: str, name: str, refs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if refs is not None:
        meta["ownerReferences"] = refs
    return {"kind": kind, "metadata": meta}


def test_an_object_the_agent_controls_is_its_own() -> None:
    mine = obj("Deployment", "acme-web", [owner_reference("acme", UID)])
    assert controlled_by(mine, UID)
    assert foreign_children([mine], UID) == []


def test_objects_of_a_childs_name_made_by_someone_else_are_foreign() -> None:
    found = [
        obj("Deployment", "acme-web"),  # no owner at all
        obj("Secret", "acme-credentials", [{**owner_reference("acme", "other-uid")}]),
        obj("Service", "acme-redis", [{**owner_reference("acme", UID), "controller": False}]),
        obj(
            "ConfigMap",
            "acme-faqs",
            [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "uid": UID, "controller": True}],
        ),
        obj("NetworkPolicy", "acme-web", [owner_reference("acme", UID)]),
    ]
    assert foreign_children(found, UID) == [
        "ConfigMap/acme-faqs",
        "Deployment/acme-web",
        "Secret/acme-credentials",
        "Service/acme-redis",
    ]


def test_the_message_names_the_objects_and_what_to_do() -> None:
    message = conflict_message(["Deployment/acme-web"], "acme")
    assert "Deployment/acme-web already exists and was not created for agent 'acme'" in message
    assert "untouched" in message and "rename the agent" in message
    assert "were not created" in conflict_message(["Secret/a", "Secret/b"], "acme")


def test_child_refs_cover_every_child_the_builders_make() -> None:
    from whatsapp_operator import builders

    ctx = make_ctx(has_service_monitor_crd=True)
    built = {
        (o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in builders.build_children(ctx)
    }
    built.add(("v1", "Secret", "acme-credentials"))
    refs = set(child_refs("acme", service_monitor=True))
    assert built <= refs
    assert refs - built == set()
    assert example_body()["metadata"]["name"] == "acme"
    # Without the CRD the ServiceMonitor is not looked at; on 1.20 the PDB is policy/v1beta1
    # and the CronJob batch/v1beta1.
    plain = child_refs(
        "acme", pdb_api_version="policy/v1beta1", cronjob_api_version="batch/v1beta1"
    )
    assert ("policy/v1beta1", "PodDisruptionBudget", "acme-web") in plain
    assert ("batch/v1beta1", "CronJob", "acme-purge") in plain
    assert not any(kind == "ServiceMonitor" for _, kind, _ in plain)
