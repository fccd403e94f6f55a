"""An in-memory API server behind :class:`whatsapp_operator.kube.Kube`'s primitives.

Only the primitives are replaced (``get``, ``list_objects``, ``create``, ``apply``,
``merge_patch``, ``delete``); every helper of ``Kube`` runs for real on top of them. What it
keeps of the API server's behaviour: ``resourceVersion`` (bumped on every write; a stale one in a
merge patch is refused with 409), ``generation`` (bumped when ``spec`` changes), the status
subresource (a main-resource write never changes ``status`` and a status write changes nothing
else), 404 for missing objects and for kinds the server does not serve, 409 on create.

``before_write(verb, obj_key)`` runs before every write and may raise (a crash, a conflict);
``after_write(verb, obj_key)`` runs after every successful write (to check an invariant).
``writes`` records every write as ``(verb, kind, name)``; ``reads`` counts ``get`` calls per
``(kind, name)``. ``watch`` selects by labels as the API server does (an object that stops
matching is ``DELETED`` for the watch); ``watches`` records each watch request.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from whatsapp_operator.kube import Kube, KubeError

Key = tuple[str, str, str]  # kind, namespace, name


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value) if isinstance(value, Mapping | list) else value
    return result


class FakeKube(Kube):
    """A ``Kube`` whose primitives work on dicts in memory (Kubernetes 1.20 by default)."""

    def __init__(self, *, not_served: set[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.objects: dict[Key, dict[str, Any]] = {}
        self.not_served = (
            {
                ("policy/v1", "PodDisruptionBudget"),
                ("batch/v1", "CronJob"),
                ("monitoring.coreos.com/v1", "ServiceMonitor"),
            }
            if not_served is None
            else not_served
        )
        self.writes: list[tuple[str, str, str]] = []
        self.reads: Counter[tuple[str, str]] = Counter()
        self.before_write: Callable[[str, Key], None] | None = None
        self.after_write: Callable[[str, Key], None] | None = None
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)
        #: ``(kind, namespace, labels)`` of every watch request.
        self.watches: list[tuple[str, str, dict[str, str]]] = []
        #: ``(kind, namespace, labels)`` of every labelled listing.
        self.lists: list[tuple[str, str, dict[str, str]]] = []
        self._watchers: list[tuple[str, str, dict[str, str], asyncio.Queue[Any]]] = []

    # -- test helpers -----------------------------------------------------------------------

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as it is (with metadata filled in), without recording a write."""
        stored = copy.deepcopy(dict(obj))
        meta = stored.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(next(self._versions))
        key = (stored["kind"], meta.get("namespace", ""), meta["name"])
        old = self.objects.get(key)
        self.objects[key] = stored
        self._notify(key, old, stored)
        return copy.deepcopy(stored)

    def _notify(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Tell the watches what changed, as the API server would with their selectors."""
        for kind, namespace, labels, queue in self._watchers:
            if (kind, namespace) != key[:2]:
                continue
            was = old is not None and _matches(old, labels)
            now = new is not None and _matches(new, labels)
            if now:
                queue.put_nowait(("MODIFIED" if was else "ADDED", copy.deepcopy(new)))
            elif was:
                queue.put_nowait(("DELETED", copy.deepcopy(old)))

    def obj(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def of_kind(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if (k, ns) == (kind, namespace)
        ]

    def written(self, kind: str | None = None) -> list[tuple[str, str, str]]:
        return [w for w in self.writes if kind is None or w[1] == kind]

    # -- the primitives ---------------------------------------------------------------------

    def _check_served(self, api_version: str, kind: str) -> None:
        if (api_version, kind) in self.not_served:
            raise KubeError(404, "NotFound", f"the server could not find {api_version} {kind}")

    def _write(self, verb: str, key: Key) -> None:
        if self.before_write is not None:
            self.before_write(verb, key)
        self.writes.append((verb, key[0], key[2]))

    def _done(self, verb: str, key: Key, result: Any) -> Any:
        if self.after_write is not None:
            self.after_write(verb, key)
        return result

    def _store(self, key: Key, obj: dict[str, Any], *, spec_changed: bool) -> dict[str, Any]:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(next(self._versions))
        if spec_changed:
            meta["generation"] = int(meta.get("generation", 1)) + 1
        old = self.objects.get(key)
        self.objects[key] = obj
        self._notify(key, old, obj)
        return copy.deepcopy(obj)

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        self._check_served(api_version, kind)
        self.reads[(kind, name)] += 1
        return self.obj(kind, namespace or "", name)

    async def list_objects(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        *,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        self._check_served(api_version, kind)
        found = [
            o
            for o in self.of_kind(kind, namespace)
            if all(
                (o["metadata"].get("labels") or {}).get(k) == v for k, v in (labels or {}).items()
            )
        ]
        return found[:limit] if limit is not None else found

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self._check_served(str(manifest["apiVersion"]), str(manifest["kind"]))
        meta = manifest["metadata"]
        key = (str(manifest["kind"]), str(meta.get("namespace", "")), str(meta["name"]))
        self._write("create", key)
        if key in self.objects:
            raise KubeError(409, "AlreadyExists", f"{key} already exists")
        return self._done("create", key, self.put(manifest))

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self._check_served(str(manifest["apiVersion"]), str(manifest["kind"]))
        meta = manifest["metadata"]
        key = (str(manifest["kind"]), str(meta.get("namespace", "")), str(meta["name"]))
        self._write("apply", key)
        old = self.objects.get(key)
        if old is None:
            return self._done("apply", key, self.put(manifest))
        new = merge(old, {k: v for k, v in manifest.items() if k not in ("status", "metadata")})
        new["metadata"] = merge(old["metadata"], manifest["metadata"])
        new["apiVersion"] = manifest["apiVersion"]
        stored = self._store(key, new, spec_changed=new.get("spec") != old.get("spec"))
        return self._done("apply", key, stored)

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
        self._check_served(api_version, kind)
        key = (kind, namespace or "", name)
        self._write("status" if subresource == "status" else "patch", key)
        old = self.objects.get(key)
        if old is None:
            raise KubeError(404, "NotFound", f"{key} not found")
        wanted_version = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted_version is not None and wanted_version != old["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict", "the object has been modified")
        body = {k: v for k, v in patch.items() if k != "metadata"}
        meta_patch = {
            k: v for k, v in (patch.get("metadata") or {}).items() if k != "resourceVersion"
        }
        if subresource == "status":
            new = merge(old, {"status": body.get("status") or {}})
        else:
            new = merge(old, {k: v for k, v in body.items() if k != "status"})
            new["metadata"] = merge(old["metadata"], meta_patch)
        stored = self._store(key, new, spec_changed=new.get("spec") != old.get("spec"))
        return self._done("status" if subresource == "status" else "patch", key, stored)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        self._check_served(api_version, kind)
        key = (kind, namespace or "", name)
        self._write("delete", key)
        old = self.objects.pop(key, None)
        self._notify(key, old, None)
        return bool(self._done("delete", key, old is not None))

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
        self.lists.append((kind, namespace, dict(labels)))
        for obj in await self.list_objects(api_version, kind, namespace, labels=labels):
            each(obj)
        return "listed"

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
        self._check_served(api_version, kind)
        self.watches.append((kind, namespace, dict(labels)))
        queue: asyncio.Queue[Any] = asyncio.Queue()
        watcher = (kind, namespace, dict(labels), queue)
        if resource_version is None:  # else: from the listing on
            for obj in await self.list_objects(api_version, kind, namespace, labels=labels):
                queue.put_nowait(("ADDED", obj))
        self._watchers.append(watcher)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._watchers.remove(watcher)

    def end_watches(self, error: Exception) -> None:
        """Every running watch ends with ``error`` (as a dropped connection or an expired
        resourceVersion ends a real one)."""
        for *_, queue in self._watchers:
            queue.put_nowait(error)


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


class RecordedEvents:
    """Events as a list of ``(type, reason, message)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def info(self, reason: str, message: str) -> None:
        self.events.append(("Normal", reason, message))

    def warn(self, reason: str, message: str) -> None:
        self.events.append(("Warning", reason, message))

    def reasons(self) -> list[str]:
        return [reason for _type, reason, _message in self.events]
