"""Play the kubelet for a control plane that has none (what kwok does).

The test control plane runs no scheduler and no kubelet, so pods stay Pending forever. These
helpers bind pods to a fake Node, report them Running and Ready (so ReplicaSets and Deployments
count them available), and finish the deletion of pods that a kubelet would have confirmed.

    from tests.kubelet import mark_pods_ready, FakeKubelet
    mark_pods_ready(core_v1, "ns", "app.kubernetes.io/instance=acme")
    with FakeKubelet(core_v1, "ns"):   # keeps doing it in the background
        ...
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

FAKE_NODE = "released-fake-node"
FAKE_NODE_IP = "10.255.0.1"


def _core(api: Any) -> client.CoreV1Api:
    if isinstance(api, client.CoreV1Api):
        return api
    if isinstance(api, client.ApiClient):
        return client.CoreV1Api(api)
    raise TypeError(f"expected CoreV1Api or ApiClient, got {type(api).__name__}")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_fake_node(api: Any, name: str = FAKE_NODE) -> str:
    """Create (once) a Node that looks Ready, for pods to be bound to."""
    core = _core(api)
    try:
        core.read_node(name)
        return name
    except ApiException as exc:
        if exc.status != 404:
            raise
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "fake-kubelet",
            },
        },
    }
    try:
        core.create_node(node)
    except ApiException as exc:
        if exc.status != 409:  # another thread was faster
            raise
    now = _now()
    core.patch_node_status(
        name,
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "fake kubelet is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": FAKE_NODE_IP},
                    {"type": "Hostname", "address": name},
                ],
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            }
        },
    )
    return name


def _pod_ip(namespace: str, name: str) -> str:
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return f"10.244.{digest[0]}.{digest[1] % 253 + 1}"


def _is_ready(pod: client.V1Pod) -> bool:
    if pod.status is None or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def mark_pods_ready(
    api: Any, namespace: str, label_selector: str = "", node_name: str = FAKE_NODE
) -> list[str]:
    """Bind every matching, not yet ready pod to a fake node and report it Running and Ready.

    Returns the names of the pods it changed. Pods being deleted are left alone.
    """
    core = _core(api)
    ensure_fake_node(core, node_name)
    changed: list[str] = []
    pods = core.list_namespaced_pod(namespace, label_selector=label_selector).items
    for pod in pods:
        meta = pod.metadata
        if meta.deletion_timestamp is not None or _is_ready(pod):
            continue
        if pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
            continue
        if not pod.spec.node_name:
            binding = client.V1Binding(
                metadata=client.V1ObjectMeta(name=meta.name),
                target=client.V1ObjectReference(api_version="v1", kind="Node", name=node_name),
            )
            try:
                # _preload_content=False: the client cannot deserialize the Status it returns.
                core.create_namespaced_pod_binding(
                    meta.name, namespace, binding, _preload_content=False
                )
            except ApiException as exc:
                if exc.status == 404:  # deleted meanwhile
                    continue
                if exc.status != 409:  # 409: already bound
                    raise
        now = _now()
        container_statuses = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": f"fake://{c.image}",
                "containerID": f"fake://{meta.namespace}/{meta.name}/{c.name}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod.spec.containers
        ]
        init_statuses = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": f"fake://{c.image}",
                "containerID": f"fake://{meta.namespace}/{meta.name}/{c.name}",
                "ready": True,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
            for c in pod.spec.init_containers or []
        ]
        conditions = [
            {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        ip = _pod_ip(namespace, meta.name)
        status: dict[str, Any] = {
            "phase": "Running",
            "conditions": conditions,
            "containerStatuses": container_statuses,
            "hostIP": FAKE_NODE_IP,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
        }
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        try:
            core.patch_namespaced_pod_status(meta.name, namespace, {"status": status})
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise
        changed.append(meta.name)
    return changed


def finish_terminating_pods(api: Any, namespace: str, label_selector: str = "") -> list[str]:
    """Delete for good the pods a kubelet would have stopped: those with a deletionTimestamp.

    Pods bound to a node are only marked for deletion by the API server; without this they stay
    Terminating forever (and so do their namespaces).
    """
    core = _core(api)
    done: list[str] = []
    for pod in core.list_namespaced_pod(namespace, label_selector=label_selector).items:
        if pod.metadata.deletion_timestamp is None:
            continue
        try:
            core.delete_namespaced_pod(
                pod.metadata.name,
                namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=pod.metadata.uid),
                ),
            )
            done.append(pod.metadata.name)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
    return done


class FakeKubelet:
    """Runs ``mark_pods_ready`` and ``finish_terminating_pods`` every ``interval`` seconds in a
    background thread, for pods that controllers keep creating. A context manager."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        label_selector: str = "",
        interval: float = 0.5,
        node_name: str = FAKE_NODE,
    ) -> None:
        self.core = _core(api)
        self.namespace = namespace
        self.label_selector = label_selector
        self.interval = interval
        self.node_name = node_name
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        mark_pods_ready(self.core, self.namespace, self.label_selector, self.node_name)
        finish_terminating_pods(self.core, self.namespace, self.label_selector)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # kept for the test to inspect
                self.errors.append(exc)
                del self.errors[:-10]
            self._stop.wait(self.interval)

    def start(self) -> FakeKubelet:
        ensure_fake_node(self.core, self.node_name)
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
