"""``whatsapp_operator.kube``: the requests its primitives send through lightkube, and how
answers and failures come back, against an HTTP transport that plays the API server.

(The helpers above the primitives run in the reconcile tests against ``fake_kube``; the real API
server is in ``tests/integration/operator``.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User
from whatsapp_operator.kube import Kube, KubeError, rollout_state

Handler = Callable[[httpx2.Request], httpx2.Response]


def kube_with(handler: Handler) -> tuple[Kube, list[httpx2.Request]]:
    seen: list[httpx2.Request] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return handler(request)

    client = AsyncClient(
        config=KubeConfig.from_one(
            cluster=Cluster(server="http://k8s.test"), user=User(token="operator-token")
        ),
        transport=httpx2.MockTransport(record),
        field_manager="released-operator",
    )
    return Kube(client), seen


def status(code: int, reason: str, message: str = "") -> httpx2.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    body.update({"reason": reason, "message": message})
    return httpx2.Response(code, json=body)


def ok(obj: dict[str, Any]) -> httpx2.Response:
    return httpx2.Response(200, json=obj)


SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}}


async def test_get_found_and_missing() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/missing"):
            return status(404, "NotFound", 'secrets "missing" not found')
        return ok({**SECRET, "data": {"k": "dg=="}})

    kube, seen = kube_with(handler)
    assert (await kube.get("v1", "Secret", "ns", "s")) == {**SECRET, "data": {"k": "dg=="}}
    assert await kube.get("v1", "Secret", "ns", "missing") is None
    assert seen[0].method == "GET" and seen[0].url.path == "/api/v1/namespaces/ns/secrets/s"
    assert seen[0].headers["authorization"] == "Bearer operator-token"
    agent_path = "/apis/whatsapp.released.io/v1alpha1/namespaces/ns/whatsappagents/a"
    await kube.get_agent("ns", "a")
    assert seen[-1].url.path == agent_path


async def test_apply_is_a_forced_server_side_apply_by_the_operator() -> None:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "acme-web", "namespace": "ns"},
        "spec": {"replicas": 2},
    }
    kube, seen = kube_with(lambda request: ok(json.loads(request.content)))
    assert await kube.apply(manifest) == manifest
    (request,) = seen
    assert request.method == "PATCH"
    assert request.url.path == "/apis/apps/v1/namespaces/ns/deployments/acme-web"
    assert request.headers["content-type"] == "application/apply-patch+yaml"
    assert dict(request.url.params) == {"fieldManager": "released-operator", "force": "true"}
    assert json.loads(request.content) == manifest


async def test_pdb_version_is_asked_once() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return status(404, "NotFound", "the server could not find the requested resource")

    kube, seen = kube_with(handler)
    assert await kube.pdb_api_version("ns") == "policy/v1beta1"  # Kubernetes 1.20
    assert await kube.pdb_api_version("other") == "policy/v1beta1"
    (request,) = seen
    assert request.url.path == "/apis/policy/v1/namespaces/ns/poddisruptionbudgets"
    assert request.url.params["limit"] == "1"

    kube, seen = kube_with(lambda r: ok({"kind": "List", "items": [], "metadata": {}}))
    assert await kube.pdb_api_version("ns") == "policy/v1"


async def test_service_monitor_presence() -> None:
    served = {"yes": True}

    def handler(request: httpx2.Request) -> httpx2.Response:
        if served["yes"]:
            return ok({"kind": "List", "items": [], "metadata": {}})
        return status(404, "NotFound")

    kube, _seen = kube_with(handler)
    assert await kube.servicemonitor_crd_exists("ns")
    served["yes"] = False
    assert not await kube.servicemonitor_crd_exists("ns")  # asked again: CRDs come and go


async def test_status_merge_patch_with_optimistic_lock() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        patch = json.loads(request.content)
        if patch["metadata"]["resourceVersion"] != "7":
            return status(409, "Conflict", "the object has been modified")
        return ok({"metadata": {"name": "a"}, **patch})

    kube, seen = kube_with(handler)
    args = ("whatsapp.released.io/v1alpha1", "WhatsAppAgent", "ns", "a")
    patch = {"metadata": {"resourceVersion": "7"}, "status": {"observedGeneration": 2}}
    await kube.merge_patch(*args, patch, subresource="status")
    assert seen[0].url.path.endswith("/whatsappagents/a/status")
    assert seen[0].headers["content-type"] == "application/merge-patch+json"
    with pytest.raises(KubeError) as raised:
        await kube.merge_patch(*args, {**patch, "metadata": {"resourceVersion": "6"}})
    assert raised.value.conflict and raised.value.retryable
    assert str(raised.value) == "409 Conflict: the object has been modified"
    with pytest.raises(ValueError, match="unsupported subresource"):
        await kube.merge_patch(*args, patch, subresource="scale")


async def test_delete_in_the_background() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/gone"):
            return status(404, "NotFound")
        return ok({"kind": "Status", "status": "Success"})

    kube, seen = kube_with(handler)
    assert await kube.delete("networking.k8s.io/v1", "Ingress", "ns", "acme")
    assert not await kube.delete("networking.k8s.io/v1", "Ingress", "ns", "gone")
    assert seen[0].method == "DELETE"
    assert seen[0].url.path == "/apis/networking.k8s.io/v1/namespaces/ns/ingresses/acme"
    assert seen[0].url.params["propagationPolicy"] == "Background"


async def test_list_by_labels_and_rollouts() -> None:
    def deployment(name: str, available: int) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "generation": 2},
            "spec": {"replicas": 1},
            "status": {
                "observedGeneration": 2,
                "replicas": 1,
                "updatedReplicas": 1,
                "availableReplicas": available,
            },
        }

    items = [deployment("acme-web", 1), deployment("acme-worker", 0)]
    kube, seen = kube_with(lambda r: ok({"kind": "List", "items": items, "metadata": {}}))
    rollouts = await kube.deployment_rollouts("ns", "acme")
    assert seen[0].url.params["labelSelector"] == (
        "app.kubernetes.io/name=released-agent,app.kubernetes.io/instance=acme"
    )
    assert [(r.name, r.complete) for r in rollouts] == [
        ("acme-web", True),
        ("acme-worker", False),
        ("acme-redis", False),  # missing: not rolled out
    ]
    assert rollouts[1].describe() == "acme-worker: 0/1 available, 1 updated"
    assert rollouts[2].describe() == "acme-redis: rollout not yet observed"


def test_rollout_of_an_unobserved_template() -> None:
    state = rollout_state(
        {
            "metadata": {"name": "w", "generation": 3},
            "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "availableReplicas": 2, "updatedReplicas": 2},
        }
    )
    assert not state.complete
    old_pods_left = rollout_state(
        {
            "metadata": {"name": "w", "generation": 3},
            "spec": {"replicas": 1},
            "status": {
                "observedGeneration": 3,
                "replicas": 2,
                "updatedReplicas": 1,
                "availableReplicas": 2,
            },
        }
    )
    assert not old_pods_left.complete


async def test_create_and_ensure_secret() -> None:
    store: dict[str, dict[str, Any]] = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST":
            obj = json.loads(request.content)
            if obj["metadata"]["name"] in store:
                return status(409, "AlreadyExists")
            store[obj["metadata"]["name"]] = {
                **obj,
                "metadata": {**obj["metadata"], "resourceVersion": "1"},
            }
            return httpx2.Response(201, json=obj)
        name = request.url.path.rsplit("/", 1)[1]
        if request.method == "GET":
            return ok(store[name]) if name in store else status(404, "NotFound")
        patch = json.loads(request.content)
        store[name]["data"].update(patch.get("data") or {})
        return ok(store[name])

    kube, seen = kube_with(handler)
    manifest = {
        **SECRET,
        "metadata": {**SECRET["metadata"], "labels": {"a": "b"}},
        "data": {"x": "eA=="},
    }
    assert await kube.ensure_secret(manifest) == ({"x": "eA=="}, True)
    assert seen[-1].method == "POST" and seen[-1].url.path == "/api/v1/namespaces/ns/secrets"
    # Existing values stay; only a missing key is added (guarded by the resourceVersion).
    again = {**manifest, "data": {"x": "bmV3", "y": "eQ=="}}
    assert await kube.ensure_secret(again) == ({"x": "eA==", "y": "eQ=="}, True)
    patch = json.loads(seen[-1].content)
    assert patch == {"metadata": {"resourceVersion": "1"}, "data": {"y": "eQ=="}}
    assert await kube.ensure_secret(again) == ({"x": "eA==", "y": "eQ=="}, False)
    with pytest.raises(KubeError) as raised:
        await kube.create(manifest)
    assert raised.value.status == 409


async def test_write_secret_values_encodes_and_removes() -> None:
    kube, seen = kube_with(lambda request: ok({**SECRET}))
    await kube.write_secret_values("ns", "s", {"a": "text", "b": None}, resource_version="9")
    assert json.loads(seen[0].content) == {
        "data": {"a": "dGV4dA==", "b": None},
        "metadata": {"resourceVersion": "9"},
    }


async def test_failures_become_kube_errors() -> None:
    def refused(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    kube, _ = kube_with(refused)
    with pytest.raises(KubeError) as raised:
        await kube.get("v1", "Secret", "ns", "s")
    assert (raised.value.status, raised.value.retryable) == (0, True)
    assert raised.value.reason == "ConnectError"

    kube, _ = kube_with(lambda r: httpx2.Response(502, text="bad gateway"))
    for call in (
        kube.get("v1", "Secret", "ns", "s"),
        kube.apply(SECRET),
        kube.list_objects("v1", "Secret", "ns"),
        kube.create(SECRET),
        kube.delete("v1", "Secret", "ns", "s"),
        kube.merge_patch("v1", "Secret", "ns", "s", {}),
    ):
        with pytest.raises(KubeError) as raised:
            await call
        assert raised.value.status == 502 and raised.value.retryable

    kube, _ = kube_with(lambda r: status(403, "Forbidden", "secrets is forbidden"))
    with pytest.raises(KubeError) as raised:
        await kube.servicemonitor_crd_exists("ns")
    assert (raised.value.status, raised.value.retryable) == (403, False)
    with pytest.raises(ValueError, match="unknown kind"):
        await kube.get("v1", "Gadget", "ns", "g")


async def test_annotate_and_close() -> None:
    kube, seen = kube_with(lambda request: ok({"metadata": {"name": "a"}}))
    await kube.annotate_agent("ns", "a", {"x/y": "1", "x/z": None})
    assert json.loads(seen[0].content) == {"metadata": {"annotations": {"x/y": "1", "x/z": None}}}
    await kube.close()
    await kube.close()  # twice is fine
