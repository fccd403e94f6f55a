"""The local control plane (hack/control-plane.sh) is a real Kubernetes 1.20.2: the API server,
the controller-manager with service-account tokens and garbage collection, and the fake kubelet
that makes Deployments available."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.k8s_control_plane import ControlPlane, start_control_plane
from tests.kubelet import FakeKubelet, mark_pods_ready

pytestmark = pytest.mark.k8s

T = TypeVar("T")
WAIT_S = 60.0


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    plane = start_control_plane()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    api_client = control_plane.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    # ServiceAccount admission refuses pods until the namespace's default account exists.
    wait_for(f"service account default in {name}", lambda: _default_sa_with_token(core, name))
    yield name
    core.delete_namespace(name)


def _default_sa_with_token(core: client.CoreV1Api, ns: str) -> bool:
    try:
        sa = core.read_namespaced_service_account("default", ns)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return bool(sa.secrets)


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def test_server_reports_v1_20_2(api: client.ApiClient) -> None:
    version = client.VersionApi(api).get_code()
    assert version.git_version == "v1.20.2"
    assert (version.major, version.minor) == ("1", "20")


def test_deployment_gets_replicaset_and_pending_pods(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    dep = apps.create_namespaced_deployment(namespace, _deployment("web", 2))

    rs = wait_for(
        "a ReplicaSet owned by the Deployment",
        lambda: [
            r
            for r in apps.list_namespaced_replica_set(namespace).items
            if any(o.uid == dep.metadata.uid for o in r.metadata.owner_references or [])
        ],
    )[0]
    pods = wait_for(
        "2 pods owned by the ReplicaSet",
        lambda: (lambda ps: ps if len(ps) == 2 else None)(
            [
                p
                for p in core.list_namespaced_pod(namespace).items
                if any(o.uid == rs.metadata.uid for o in p.metadata.owner_references or [])
            ]
        ),
    )
    for pod in pods:
        assert pod.status.phase == "Pending"
        assert not pod.spec.node_name  # no scheduler: nobody binds it
        # ServiceAccount admission mounted the token that the token controller made.
        assert pod.spec.service_account_name == "default"
        secrets = [v.secret.secret_name for v in pod.spec.volumes or [] if v.secret]
        assert any(s.startswith("default-token-") for s in secrets), secrets


def test_garbage_collection_deletes_dependents(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            },
            "data": {"k": "v"},
        },
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for("garbage collection of the dependent ConfigMap", dependent_gone)


def test_fake_kubelet_makes_deployment_available(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, _deployment("worker", 3))
    selector = "app.kubernetes.io/name=worker"

    def available() -> bool:
        mark_pods_ready(core, namespace, selector)
        dep = apps.read_namespaced_deployment("worker", namespace)
        return dep.status.available_replicas == 3 and dep.status.ready_replicas == 3

    wait_for("Deployment worker to have 3 available replicas", available)
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        assert pod.status.phase == "Running"
        assert pod.spec.node_name == "released-fake-node"

    # Scaling down: the FakeKubelet confirms the deletions a real kubelet would, so no pod
    # stays Terminating.
    with FakeKubelet(core, namespace, selector) as kubelet:
        apps.patch_namespaced_deployment_scale("worker", namespace, {"spec": {"replicas": 1}})
        wait_for(
            "1 pod left after scaling down",
            lambda: len(core.list_namespaced_pod(namespace, label_selector=selector).items) == 1,
        )
        wait_for(
            "Deployment worker to have 1 available replica",
            lambda: (
                apps.read_namespaced_deployment("worker", namespace).status.available_replicas == 1
            ),
        )
    assert not kubelet.errors
