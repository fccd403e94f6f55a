"""The operator's access to the Kubernetes API, through the ``lightkube`` client library.

:class:`Kube` has two layers. Its *primitives* (``get``, ``list_objects``, ``create``, ``apply``,
``merge_patch``, ``delete``, ``serves``) are the only methods that talk to the API server; the
*helpers* above them (Secrets, ConfigMaps, rollouts, the agents themselves) are written in terms
of the primitives only, so a test can replace the primitives with an in-memory store
(``tests/unit/operator/fake_kube.py``) and run every helper for real.

Every kind is handled as a lightkube *generic resource* (plain dicts in and out), so the
builders' manifests are sent as they are and no kind needs typed models. Children are applied
with server-side apply (``fieldManager=released-operator``, ``force=true``): applying the same
manifest twice is a no-op, and fields that other managers own (an HPA's replicas,
``kubectl annotate``) are left alone unless the operator claims them.

lightkube's configuration loader handles an in-cluster service account (re-reading its token as
it rotates) and kubeconfig files (``$KUBECONFIG``) alike.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.types import CascadeType, PatchType

from released.agent.naming import agent_labels, child_names

from . import FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION

AGENT_API_VERSION = f"{GROUP}/{VERSION}"

#: kind -> (plural, namespaced): the kinds that the operator reads or writes.
KINDS: dict[str, tuple[str, bool]] = {
    "ConfigMap": ("configmaps", True),
    "Secret": ("secrets", True),
    "Service": ("services", True),
    "ServiceAccount": ("serviceaccounts", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "Deployment": ("deployments", True),
    "CronJob": ("cronjobs", True),
    "NetworkPolicy": ("networkpolicies", True),
    "Ingress": ("ingresses", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "ServiceMonitor": ("servicemonitors", True),
    KIND: (PLURAL, True),
}

#: One request's time limit (seconds); watches are kopf's, not ours.
REQUEST_TIMEOUT = 30.0
#: Connections of the request client (passes run at most ``RELEASED_CONCURRENT_RECONCILES``
#: at once, each with a few requests in flight).
MAX_CONNECTIONS = 100
#: Of those, how many are kept open between requests. Every request looks at each pooled
#: connection (is it closed, has it expired), so a large idle pool costs CPU on every request;
#: the timers' requests at rest need only a few.
KEEPALIVE_CONNECTIONS = 16
#: How long an idle connection to the API server is kept: under kube-apiserver's own idle
#: timeout (90 s), so that it is the client that closes it.
KEEPALIVE_SECONDS = 60.0


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


def _kube_error(exc: Exception) -> KubeError:
    """lightkube's and httpx2's exceptions as a :class:`KubeError`."""
    if isinstance(exc, ApiError):
        status = exc.status
        return KubeError(int(status.code or 0), str(status.reason or ""), str(status.message or ""))
    if isinstance(exc, httpx2.HTTPStatusError):  # an error body that is not JSON
        response = exc.response
        return KubeError(response.status_code, response.reason_phrase, response.text[:1000])
    return KubeError(0, type(exc).__name__, str(exc)[:500])


def _resource(api_version: str, kind: str) -> Any:
    """lightkube's generic resource class for ``api_version``/``kind`` (created once)."""
    found = resource_registry.get(api_version, kind)
    if found is not None:
        return found
    try:
        plural, namespaced = KINDS[kind]
    except KeyError as exc:
        raise ValueError(f"unknown kind {kind!r}: add it to kube.KINDS") from exc
    group, _, version = api_version.rpartition("/")
    create = create_namespaced_resource if namespaced else create_global_resource
    return create(group, version, kind, plural)


def _as_dict(obj: Any) -> dict[str, Any]:
    return dict(obj.to_dict()) if hasattr(obj, "to_dict") else dict(obj or {})


def _b64encode(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


@dataclass(frozen=True)
class RolloutState:
    """Where one Deployment stands in rolling out its current template."""

    name: str
    desired: int
    updated: int
    available: int
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
        observed_current=observed_current,
    )


class Kube:
    """The Kubernetes API as the operator uses it (one per process; see :func:`shared`)."""

    def __init__(self, client: AsyncClient | None = None) -> None:
        self._client = client
        self._watch_client: AsyncClient | None = None
        #: ``api_version/plural`` -> served (discovery answers that do not change at run time).
        self._served: dict[str, bool] = {}

    @property
    def client(self) -> AsyncClient:
        """The lightkube client, created on first use (in-cluster config or ``$KUBECONFIG``).

        Up to :data:`KEEPALIVE_CONNECTIONS` of its connections stay open for
        :data:`KEEPALIVE_SECONDS` between requests (httpx keeps at most 20 for 5 s by default):
        a new TLS connection costs the operator more CPU than the request it carries, and the
        timers' and checks' requests come seconds apart."""
        if self._client is None:
            self._client = _client(
                httpx2.Limits(
                    max_connections=MAX_CONNECTIONS,
                    max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                    keepalive_expiry=KEEPALIVE_SECONDS,
                )
            )
        return self._client

    @property
    def watch_client(self) -> AsyncClient:
        """A second client for the long-lived watches (and their listings), each holding one
        HTTP/1.1 connection of a pool without a limit, so that the watches of many namespaces
        never wait for the requests of a pass nor for each other. (httpx's HTTP/2 stalls once
        a dozen streams share a connection.)"""
        if self._watch_client is None:
            self._watch_client = _client(
                httpx2.Limits(max_connections=None, max_keepalive_connections=None)
            )
        return self._watch_client

    async def close(self) -> None:
        for client in (self._client, self._watch_client):
            if client is not None:
                await client.close()
        self._client = self._watch_client = None

    # -- primitives: the only methods that talk to the API server ---------------------------

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The object, or ``None`` when it does not exist."""
        try:
            obj = await self.client.get(_resource(api_version, kind), name, namespace=namespace)
        except (ApiError, httpx2.HTTPError) as exc:
            error = _kube_error(exc)
            if error.not_found:
                return None
            raise error from None
        return _as_dict(obj)

    async def list_objects(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        *,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Objects of one kind in a namespace, optionally those with ``labels``; at most
        ``limit`` of them (one page) when given."""
        found: list[dict[str, Any]] = []
        try:
            async for obj in self.client.list(
                _resource(api_version, kind),
                namespace=namespace,
                labels=dict(labels) if labels else None,
                chunk_size=limit,
            ):
                found.append(_as_dict(obj))
                if limit is not None and len(found) >= limit:
                    break
        except (ApiError, httpx2.HTTPError) as exc:
            raise _kube_error(exc) from None
        return found

    async def list_labelled(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        *,
        labels: Mapping[str, str],
        each: Callable[[dict[str, Any]], None],
        page: int = 250,
    ) -> str:
        """Call ``each`` with every object of one kind in ``namespace`` that carries ``labels``
        (selected by the API server, ``page`` at a time, so that a namespace of thousands of
        children is never held whole); return the ``resourceVersion`` of the listing, to watch
        from."""
        try:
            listing = self.watch_client.list(
                _resource(api_version, kind),
                namespace=namespace,
                labels=dict(labels),
                chunk_size=page,
            )
            async for obj in listing:
                each(_as_dict(obj))
            version = listing.resourceVersion
        except (ApiError, httpx2.HTTPError) as exc:
            raise _kube_error(exc) from None
        return str(version)

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        *,
        labels: Mapping[str, str],
        server_timeout: int = 300,
        resource_version: str | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(type, object)`` of the objects of one kind in ``namespace`` that carry ``labels``
        (selected by the API server): without ``resource_version`` first an ``ADDED`` for each
        existing one, then every change (with it, the changes after that version). Reconnects
        after ``server_timeout`` seconds where it left off; any error (a lost connection,
        ``410 Gone``) ends it as a :class:`KubeError`, and the caller starts again (from a
        fresh listing)."""
        stream = self.watch_client.watch(
            _resource(api_version, kind),
            namespace=namespace,
            labels=dict(labels),
            server_timeout=server_timeout,
            resource_version=resource_version,
        )
        try:
            async for event, obj in stream:
                yield str(event), _as_dict(obj)
        except (ApiError, httpx2.HTTPError) as exc:
            raise _kube_error(exc) from None

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``manifest`` (409 when it exists)."""
        res = _resource(str(manifest["apiVersion"]), str(manifest["kind"]))
        try:
            return _as_dict(await self.client.create(res(dict(manifest))))
        except (ApiError, httpx2.HTTPError) as exc:
            raise _kube_error(exc) from None

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply ``manifest`` as ``released-operator`` (force); the live object."""
        meta = manifest["metadata"]
        res = _resource(str(manifest["apiVersion"]), str(manifest["kind"]))
        try:
            obj = await self.client.patch(
                res,
                str(meta["name"]),
                dict(manifest),
                namespace=meta.get("namespace"),
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        except (ApiError, httpx2.HTTPError) as exc:
            raise _kube_error(exc) from None
        return _as_dict(obj)

    async def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch (``subresource="status"`` for the status subresource).

        A ``metadata.resourceVersion`` in ``patch`` makes the write fail with 409 when the
        object changed since it was read (optimistic locking).
        """
        res = _resource(api_version, kind)
        if subresource == "status":
            res = res.Status
        elif subresource is not None:
            raise ValueError(f"unsupported subresource {subresource!r}")
        try:
            obj = await self.client.patch(
                res, name, dict(patch), namespace=namespace, patch_type=PatchType.MERGE
            )
        except (ApiError, httpx2.HTTPError) as exc:
            raise _kube_error(exc) from None
        return _as_dict(obj)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete an object (background propagation); ``False`` when it was already gone."""
        try:
            await self.client.delete(
                _resource(api_version, kind),
                name,
                namespace=namespace,
                cascade=CascadeType.BACKGROUND,
            )
        except (ApiError, httpx2.HTTPError) as exc:
            error = _kube_error(exc)
            if error.not_found:
                return False
            raise error from None
        return True

    async def serves(self, api_version: str, kind: str, namespace: str) -> bool:
        """Whether the API server serves ``kind`` in ``api_version`` (asked by listing at most
        one object in ``namespace``: a kind that is not served answers 404)."""
        try:
            await self.list_objects(api_version, kind, namespace, limit=1)
        except KubeError as exc:
            if exc.not_found or exc.status == 503:
                return False
            raise
        return True

    # -- helpers: built on the primitives only ----------------------------------------------

    async def apply_all(self, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply each manifest in order (ServiceAccounts and ConfigMaps before Deployments)."""
        return [await self.apply(m) for m in manifests]

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's ``data`` (still base64-encoded), or ``None`` when it does not exist."""
        obj = await self.get("v1", "Secret", namespace, name)
        if obj is None:
            return None
        return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}

    async def read_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's ``data``, or ``None`` when it does not exist."""
        obj = await self.get("v1", "ConfigMap", namespace, name)
        if obj is None:
            return None
        return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}

    async def ensure_secret(self, manifest: Mapping[str, Any]) -> tuple[dict[str, str], bool]:
        """Create the Secret, or add only the keys it lacks: existing values are never overwritten.

        ``manifest`` carries freshly generated values under ``data`` (base64). Returns the
        Secret's resulting ``data`` (base64) and whether anything was written. Labels and owner
        references are kept in step on every call.
        """
        meta = dict(manifest.get("metadata") or {})
        namespace, name = str(meta["namespace"]), str(meta["name"])
        wanted: dict[str, str] = {str(k): str(v) for k, v in (manifest.get("data") or {}).items()}
        existing = await self.get("v1", "Secret", namespace, name)
        if existing is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta,
                "type": manifest.get("type", "Opaque"),
                "data": wanted,
            }
            try:
                await self.create(body)
                return wanted, True
            except KubeError as exc:
                if not exc.conflict:  # someone (an earlier run of ours) created it meanwhile
                    raise
                existing = await self.get("v1", "Secret", namespace, name)
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
        await self.merge_patch("v1", "Secret", namespace, name, patch)
        return {**current, **missing}, True

    async def write_secret_values(
        self,
        namespace: str,
        name: str,
        values: Mapping[str, str | None],
        *,
        resource_version: str | None = None,
    ) -> None:
        """Set keys of an existing Secret to the given text values (``None`` removes a key).

        With ``resource_version`` the write fails with 409 when the Secret changed since it
        was read.
        """
        data = {k: None if v is None else _b64encode(v) for k, v in values.items()}
        patch: dict[str, Any] = {"data": data}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        await self.merge_patch("v1", "Secret", namespace, name, patch)

    async def pdb_api_version(self, namespace: str) -> str:
        """``policy/v1`` where the server has it (1.21+), else ``policy/v1beta1`` (asked once).

        Kubernetes 1.20 only has ``policy/v1beta1`` PodDisruptionBudgets, whose spec is the same
        for what the operator sets (``minAvailable``/``maxUnavailable``, ``selector``); the
        builders write the version this returns.
        """
        key = "policy/v1/poddisruptionbudgets"
        if key not in self._served:
            self._served[key] = await self.serves("policy/v1", "PodDisruptionBudget", namespace)
        return "policy/v1" if self._served[key] else "policy/v1beta1"

    async def cronjob_api_version(self, namespace: str) -> str:
        """``batch/v1`` where the server has it (1.21+), else ``batch/v1beta1`` (asked once).

        Kubernetes 1.20 serves CronJobs as ``batch/v1beta1`` only (and 1.25 no longer does);
        the spec is the same for what the operator sets.
        """
        key = "batch/v1/cronjobs"
        if key not in self._served:
            self._served[key] = await self.serves("batch/v1", "CronJob", namespace)
        return "batch/v1" if self._served[key] else "batch/v1beta1"

    async def servicemonitor_crd_exists(self, namespace: str) -> bool:
        """Whether the Prometheus operator's ServiceMonitor kind is installed (asked each time:
        the CRD may come and go)."""
        return await self.serves("monitoring.coreos.com/v1", "ServiceMonitor", namespace)

    async def deployment_rollouts(self, namespace: str, agent: str) -> list[RolloutState]:
        """Rollout states of agent ``agent``'s three Deployments, read with one list call (a
        missing one counts as not rolled out)."""
        names = child_names(agent).deployments
        found = {
            str((obj.get("metadata") or {}).get("name")): obj
            for obj in await self.list_objects(
                "apps/v1", "Deployment", namespace, labels=agent_labels(agent)
            )
        }
        return [
            rollout_state(found[name])
            if name in found
            else RolloutState(name, 1, 0, 0, observed_current=False)
            for name in names
        ]

    async def get_agent(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get(AGENT_API_VERSION, KIND, namespace, name)

    async def annotate_agent(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Set (or, with ``None``, remove) annotations of an agent."""
        await self.merge_patch(
            AGENT_API_VERSION,
            KIND,
            namespace,
            name,
            {"metadata": {"annotations": dict(annotations)}},
        )


def _client(limits: httpx2.Limits) -> AsyncClient:
    """A lightkube client over an HTTP/1.1 pool with ``limits`` (in-cluster config or
    ``$KUBECONFIG``)."""
    config = KubeConfig.from_env().get()
    if config is None or config.user is None:
        raise KubeError(0, "NoConfig", "no Kubernetes configuration")
    transport = httpx2.AsyncHTTPTransport(
        verify=verify_cluster(config.cluster, config.user, config.abs_file), limits=limits
    )
    return AsyncClient(
        config,
        field_manager=FIELD_MANAGER,
        timeout=httpx2.Timeout(REQUEST_TIMEOUT),
        transport=transport,
    )


_shared: Kube | None = None


def shared() -> Kube:
    """The process-wide :class:`Kube` that the kopf handlers use (created on first use)."""
    global _shared
    if _shared is None:
        _shared = Kube()
    return _shared
