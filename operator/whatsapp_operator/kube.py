"""Talking to the Kubernetes API: server-side apply, Secrets, ConfigMaps, rollouts, pods.

One client library everywhere: the official ``kubernetes`` package. Its configuration loader
handles in-cluster service-account tokens (refreshed as they rotate) and kubeconfig files
alike; requests go through its generic ``param_serialize``/``call_api`` pair, so any kind can
be applied from a plain manifest dict without a per-kind method. The client is blocking, so every
public function here is ``async`` and runs the request in a worker thread.

Children are applied with server-side apply (``PATCH`` with ``application/apply-patch+yaml``,
``fieldManager=released-operator``, ``force=true``): applying the same manifest twice is a no-op,
and fields that other managers own (an HPA's replicas, ``kubectl annotate``) are left alone
unless the operator claims them.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from released.agent.naming import agent_selector

from . import FIELD_MANAGER, GROUP, PLURAL, VERSION

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE = "application/merge-patch+json"

#: kind -> (plural, namespaced). Kinds that the operator reads or writes.
KINDS: dict[str, tuple[str, bool]] = {
    "ConfigMap": ("configmaps", True),
    "Secret": ("secrets", True),
    "Service": ("services", True),
    "ServiceAccount": ("serviceaccounts", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "Pod": ("pods", True),
    "Event": ("events", True),
    "Deployment": ("deployments", True),
    "StatefulSet": ("statefulsets", True),
    "ReplicaSet": ("replicasets", True),
    "NetworkPolicy": ("networkpolicies", True),
    "Ingress": ("ingresses", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "ServiceMonitor": ("servicemonitors", True),
    "Namespace": ("namespaces", False),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "WhatsAppAgent": (PLURAL, True),
}

AGENT_API_VERSION = f"{GROUP}/{VERSION}"


class KubeError(Exception):
    """A non-2xx answer of the API server (``status`` 0: no answer at all)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def retryable(self) -> bool:
        """Timeouts, throttling, server errors and lost connections are worth retrying."""
        return self.status in (0, 408, 409, 429) or self.status >= 500


# ---------------------------------------------------------------------------------------------
# the client


_client_lock = threading.Lock()
_client: Any = None


def load_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: in-cluster config first, else the kubeconfig.

    ``kubeconfig`` (or ``$KUBECONFIG``) selects a file; without either and outside a cluster the
    default ``~/.kube/config`` is used.
    """
    from kubernetes import client, config

    if (
        kubeconfig is None
        and os.environ.get("KUBERNETES_SERVICE_HOST")
        and not os.environ.get("KUBECONFIG")
    ):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    return config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig or os.environ.get("KUBECONFIG")
    )


def get_client() -> Any:
    """The process-wide client, created on first use."""
    global _client
    with _client_lock:
        if _client is None:
            _client = load_client()
        return _client


def set_client(api_client: Any) -> None:
    """Use ``api_client`` from now on (tests; ``None`` forgets the current one)."""
    global _client
    with _client_lock:
        _client = api_client


def request_sync(
    method: str,
    path: str,
    *,
    body: Any = None,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    api_client: Any = None,
    timeout: float = 30.0,
) -> Any:
    """One blocking request; returns the decoded JSON body (``None`` when empty)."""
    api = api_client or get_client()
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    try:
        m, url, hdrs, payload, _post = api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = api.call_api(m, url, hdrs, payload, _request_timeout=timeout)
        raw = resp.read()
    except KubeError:
        raise
    except Exception as exc:  # connection refused, TLS errors, ApiException(status=0)
        status = int(getattr(exc, "status", 0) or 0)
        raise KubeError(status, type(exc).__name__, str(exc)[:500]) from exc
    text = raw.decode() if isinstance(raw, bytes) else (raw or "")
    if not 200 <= resp.status <= 299:
        reason, message = str(resp.reason or ""), text[:1000]
        try:
            decoded = json.loads(text)
            reason = str(decoded.get("reason") or reason)
            message = str(decoded.get("message") or message)
        except (ValueError, AttributeError):
            pass
        raise KubeError(int(resp.status), reason, message)
    return json.loads(text) if text else None


async def request(
    method: str,
    path: str,
    *,
    body: Any = None,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    request_timeout: float = 30.0,
) -> Any:
    """The async form of :func:`request_sync` (runs in a worker thread)."""
    return await asyncio.to_thread(
        request_sync,
        method,
        path,
        body=body,
        query=query,
        content_type=content_type,
        timeout=request_timeout,
    )


# ---------------------------------------------------------------------------------------------
# paths


def api_prefix(api_version: str) -> str:
    """``/api/v1`` for the core group, ``/apis/GROUP/VERSION`` otherwise."""
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


def resource_path(
    api_version: str, kind: str, namespace: str | None = None, name: str | None = None
) -> str:
    """The REST path of a collection (no ``name``) or of one object."""
    try:
        plural, namespaced = KINDS[kind]
    except KeyError as exc:
        raise ValueError(f"unknown kind {kind!r}: add it to kube.KINDS") from exc
    path = api_prefix(api_version)
    if namespaced:
        if not namespace:
            raise ValueError(f"{kind} is namespaced: a namespace is needed")
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    return path


def manifest_path(manifest: Mapping[str, Any], namespace: str | None = None) -> str:
    meta = manifest.get("metadata", {})
    return resource_path(
        str(manifest["apiVersion"]),
        str(manifest["kind"]),
        meta.get("namespace") or namespace,
        str(meta["name"]),
    )


# ---------------------------------------------------------------------------------------------
# apply, get, delete


async def apply(manifest: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
    """Server-side apply ``manifest`` as ``released-operator`` (force); returns the live object."""
    manifest = await _fit_to_server(manifest)
    result = await request(
        "PATCH",
        manifest_path(manifest, namespace),
        body=dict(manifest),
        query={"fieldManager": FIELD_MANAGER, "force": "true"},
        content_type=APPLY_CONTENT_TYPE,
    )
    return dict(result or {})


async def apply_all(
    manifests: list[dict[str, Any]], *, namespace: str | None = None
) -> list[dict[str, Any]]:
    """Apply each manifest in order (ServiceAccounts and ConfigMaps before Deployments)."""
    return [await apply(m, namespace=namespace) for m in manifests]


async def get(
    api_version: str, kind: str, namespace: str | None, name: str
) -> dict[str, Any] | None:
    """The object, or ``None`` when it does not exist."""
    try:
        return dict(await request("GET", resource_path(api_version, kind, namespace, name)))
    except KubeError as exc:
        if exc.not_found:
            return None
        raise


async def list_objects(
    api_version: str,
    kind: str,
    namespace: str | None,
    *,
    label_selector: str | None = None,
) -> list[dict[str, Any]]:
    """Objects of one kind in a namespace (``None``: all namespaces), optionally by labels."""
    plural, _namespaced = KINDS[kind]
    if namespace:
        path = resource_path(api_version, kind, namespace)
    else:
        path = f"{api_prefix(api_version)}/{plural}"
    query = {"labelSelector": label_selector} if label_selector else None
    result = await request("GET", path, query=query)
    return [dict(item) for item in (result or {}).get("items", [])]


async def delete(api_version: str, kind: str, namespace: str | None, name: str) -> bool:
    """Delete an object (background propagation); ``False`` when it was already gone."""
    try:
        await request(
            "DELETE",
            resource_path(api_version, kind, namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
    except KubeError as exc:
        if exc.not_found:
            return False
        raise
    return True


async def merge_patch(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str,
    patch: Mapping[str, Any],
    *,
    subresource: str | None = None,
) -> dict[str, Any]:
    """A JSON merge patch (``subresource="status"`` for the status subresource)."""
    path = resource_path(api_version, kind, namespace, name)
    if subresource:
        path += f"/{subresource}"
    return dict(await request("PATCH", path, body=dict(patch), content_type=MERGE_CONTENT_TYPE))


# ---------------------------------------------------------------------------------------------
# Secrets and ConfigMaps


async def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's ``data`` (still base64-encoded), or ``None`` when it does not exist."""
    obj = await get("v1", "Secret", namespace, name)
    if obj is None:
        return None
    return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}


async def read_configmap(namespace: str, name: str) -> dict[str, str] | None:
    """A ConfigMap's ``data``, or ``None`` when it does not exist."""
    obj = await get("v1", "ConfigMap", namespace, name)
    if obj is None:
        return None
    return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}


async def ensure_secret(manifest: Mapping[str, Any]) -> tuple[dict[str, str], bool]:
    """Create the Secret, or add only the keys it lacks: existing values are never overwritten.

    ``manifest`` carries freshly generated values under ``data`` (base64) or ``stringData``.
    Returns the Secret's resulting ``data`` (base64) and whether anything was written.
    Labels and owner references are kept in step on every call.
    """
    import base64

    meta = dict(manifest.get("metadata") or {})
    namespace, name = str(meta["namespace"]), str(meta["name"])
    wanted: dict[str, str] = {str(k): str(v) for k, v in (manifest.get("data") or {}).items()}
    for key, value in (manifest.get("stringData") or {}).items():
        wanted[str(key)] = base64.b64encode(str(value).encode()).decode()
    existing = await get("v1", "Secret", namespace, name)
    if existing is None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": manifest.get("type", "Opaque"),
            "data": wanted,
        }
        try:
            await request("POST", resource_path("v1", "Secret", namespace), body=body)
            return wanted, True
        except KubeError as exc:
            if exc.status != 409:  # someone (an earlier run of ours) created it meanwhile
                raise
            existing = await get("v1", "Secret", namespace, name)
            if existing is None:
                raise
    current = {str(k): str(v) for k, v in (existing.get("data") or {}).items()}
    missing = {k: v for k, v in wanted.items() if k not in current}
    old_meta = existing.get("metadata") or {}
    meta_patch: dict[str, Any] = {}
    labels = meta.get("labels") or {}
    if any((old_meta.get("labels") or {}).get(k) != v for k, v in labels.items()):
        meta_patch["labels"] = labels
    if meta.get("ownerReferences") and not old_meta.get("ownerReferences"):
        meta_patch["ownerReferences"] = meta["ownerReferences"]
    if not missing and not meta_patch:
        return current, False
    # The resourceVersion makes the patch fail (409) if someone changed the Secret meanwhile.
    patch: dict[str, Any] = {
        "metadata": {**meta_patch, "resourceVersion": old_meta.get("resourceVersion")}
    }
    if missing:
        patch["data"] = missing
    await merge_patch("v1", "Secret", namespace, name, patch)
    return {**current, **missing}, True


async def replace_secret_data(
    namespace: str,
    name: str,
    data: Mapping[str, str | None],
    *,
    resource_version: str | None = None,
) -> None:
    """Set (base64) or, with ``None``, remove keys of an existing Secret.

    With ``resource_version`` the write fails with 409 when the Secret changed since it was read.
    """
    patch: dict[str, Any] = {"data": dict(data)}
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    await merge_patch("v1", "Secret", namespace, name, patch)


# ---------------------------------------------------------------------------------------------
# discovery


_group_cache: dict[str, bool] = {}


async def api_resource_exists(api_version: str, plural: str) -> bool:
    """Whether the server serves ``plural`` in ``api_version`` (discovery; not cached)."""
    try:
        result = await request("GET", api_prefix(api_version))
    except KubeError as exc:
        if exc.not_found or exc.status == 503:
            return False
        raise
    return any(r.get("name") == plural for r in (result or {}).get("resources", []))


async def pdb_api_version() -> str:
    """``policy/v1`` where the server has it (1.21+), else ``policy/v1beta1`` (cached)."""
    key = "policy/v1:poddisruptionbudgets"
    if key not in _group_cache:
        _group_cache[key] = await api_resource_exists("policy/v1", "poddisruptionbudgets")
    return "policy/v1" if _group_cache[key] else "policy/v1beta1"


async def servicemonitor_crd_exists() -> bool:
    """Whether the Prometheus operator's ServiceMonitor kind is installed."""
    return await api_resource_exists("monitoring.coreos.com/v1", "servicemonitors")


async def _fit_to_server(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    """Serve the manifest in a version this server knows (PDB ``policy/v1`` needs 1.21+).

    Kubernetes 1.20 only has ``policy/v1beta1`` PodDisruptionBudgets, whose spec is the same
    for what the operator sets (``minAvailable``/``maxUnavailable``, ``selector``).
    """
    if manifest.get("kind") != "PodDisruptionBudget" or manifest.get("apiVersion") != "policy/v1":
        return manifest
    if await pdb_api_version() == "policy/v1":
        return manifest
    return {**manifest, "apiVersion": "policy/v1beta1"}


# ---------------------------------------------------------------------------------------------
# workloads


@dataclass(frozen=True)
class RolloutState:
    """Where one Deployment stands in rolling out its current template."""

    name: str
    desired: int
    updated: int
    available: int
    ready: int
    observed_current: bool

    @property
    def complete(self) -> bool:
        """Rolled to the current template, with all desired replicas available."""
        return (
            self.observed_current
            and self.updated >= self.desired
            and self.available >= self.desired
        )

    def describe(self) -> str:
        if not self.observed_current:
            return f"{self.name}: rollout not yet observed"
        return f"{self.name}: {self.available}/{self.desired} available, {self.updated} updated"


def rollout_state(deployment: Mapping[str, Any]) -> RolloutState:
    """Read a Deployment's rollout from its status (observedGeneration, updated, available)."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    total = int(status.get("replicas", 0) or 0)
    updated = int(status.get("updatedReplicas", 0) or 0)
    observed = int(status.get("observedGeneration", 0) or 0) >= int(meta.get("generation", 0) or 0)
    # Old pods still around mean the rollout has not finished even when enough are available.
    observed_current = observed and total <= max(updated, desired)
    return RolloutState(
        name=str(meta.get("name", "")),
        desired=desired,
        updated=updated,
        available=int(status.get("availableReplicas", 0) or 0),
        ready=int(status.get("readyReplicas", 0) or 0),
        observed_current=observed_current,
    )


async def deployment_rollouts(
    namespace: str, names: list[str], *, selector: str | None = None
) -> list[RolloutState]:
    """Rollout states of the named Deployments (a missing one counts as not rolled out).

    With ``selector`` one list call fetches them all; without it, one get per name.
    """
    found: dict[str, dict[str, Any]] = {}
    if selector is not None:
        for obj in await list_objects("apps/v1", "Deployment", namespace, label_selector=selector):
            found[str((obj.get("metadata") or {}).get("name"))] = obj
    else:
        for name in names:
            one = await get("apps/v1", "Deployment", namespace, name)
            if one is not None:
                found[name] = one
    return [
        rollout_state(found[name])
        if name in found
        else RolloutState(name, 1, 0, 0, 0, observed_current=False)
        for name in names
    ]


async def list_agent_pods(namespace: str, instance: str) -> list[dict[str, Any]]:
    """The pods of one agent (by its name and instance labels)."""
    return await list_objects("v1", "Pod", namespace, label_selector=agent_selector(instance))


# ---------------------------------------------------------------------------------------------
# the agents themselves


async def get_agent(namespace: str, name: str) -> dict[str, Any] | None:
    return await get(AGENT_API_VERSION, "WhatsAppAgent", namespace, name)


async def patch_agent_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch the agent's status subresource."""
    await merge_patch(
        AGENT_API_VERSION,
        "WhatsAppAgent",
        namespace,
        name,
        {"status": dict(status)},
        subresource="status",
    )


async def annotate_agent(namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
    """Set (or, with ``None``, remove) annotations of an agent."""
    await merge_patch(
        AGENT_API_VERSION,
        "WhatsAppAgent",
        namespace,
        name,
        {"metadata": {"annotations": dict(annotations)}},
    )
