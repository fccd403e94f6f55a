"""Watching the Secrets and ConfigMaps that agents reference, selected by the API server.

The operator does not watch every Secret and ConfigMap it may read. When a pass reads one that
an agent references (the Meta, OpenAI and database Secrets, the FAQ ConfigMap), it labels it
:data:`REFERENCED_LABEL` (``whatsapp.released.io/referenced=true``) unless it is labelled
already, and :class:`ReferenceWatches` watches, in each namespace where agents reference
something, only the objects with that label: the selector is part of the watch request, so the
API server sends nothing else. There is no cluster-wide list or watch of Secrets in any mode;
a namespace's watches stop when no agent there references anything any more, and the label is
taken off objects no agent references (:func:`whatsapp_operator.reconcile.references.release`).
Each kind is listed before it is watched, and the latest of each labelled object is kept: the
passes read referenced objects from here (:meth:`ReferenceWatches.cached`).

A change to an object's data (``data``/``binaryData``; not to its labels or annotations) calls
``on_change(kind, namespace, name)``, and so does its deletion or the loss of the label; the
handlers then re-reconcile exactly the agents that reference it. An object that does not exist
yet cannot be labelled: the pass that misses it retries (within
:data:`~whatsapp_operator.reconcile.context.MISSING_INPUT_MAX_DELAY` seconds) and labels it then.

The watches run on :attr:`Kube.watch_client <whatsapp_operator.kube.Kube.watch_client>` (HTTP/2:
the watches of many namespaces share one connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from released.agent.naming import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY

from . import GROUP
from .applying import applied_hash
from .kube import AGENT_API_VERSION, Kube, KubeError, RolloutState, rollout_state

logger = logging.getLogger("whatsapp_operator")

#: The label the operator puts on the Secrets and ConfigMaps that agents reference.
REFERENCED_LABEL = f"{GROUP}/referenced"
REFERENCED_VALUE = "true"
#: The kinds watched, with their apiVersion.
KINDS: dict[str, str] = {"Secret": "v1", "ConfigMap": "v1"}

#: The kinds of children listed and watched (``CronJob``'s and ``PodDisruptionBudget``'s
#: apiVersion as the server serves them); not the generated Secret (no Secret is watched but the
#: referenced ones) nor the optional ServiceMonitor.
CHILD_KINDS: dict[str, str] = {
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "PersistentVolumeClaim": "v1",
    "Service": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Ingress": "networking.k8s.io/v1",
    "Deployment": "apps/v1",
    "CronJob": "batch/v1",
    "PodDisruptionBudget": "policy/v1",
}

#: ``on_change(kind, namespace, name)``: a referenced object's data changed (or it went away).
OnChange = Callable[[str, str, str], Awaitable[None]]


def data_digest(obj: Mapping[str, Any]) -> str:
    """A digest of an object's ``data`` and ``binaryData`` (nothing of it can be recovered)."""
    payload = json.dumps([obj.get("data") or {}, obj.get("binaryData") or {}], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def is_labelled(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` carries :data:`REFERENCED_LABEL`."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(REFERENCED_LABEL) == REFERENCED_VALUE


class _Watches:
    """What both kinds of watches share: one task per kind and namespace, each running
    :meth:`_watch` again ``retry_delay`` seconds after it ends or fails, until cancelled."""

    #: The kinds watched in each namespace.
    kinds: Mapping[str, str] = {}

    def __init__(self, kube: Kube, *, server_timeout: int, retry_delay: float) -> None:
        self.kube = kube
        self.server_timeout = server_timeout
        self.retry_delay = retry_delay
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def start(self, namespace: str) -> None:
        """Watch ``namespace`` (nothing happens when it is watched already)."""
        for kind in self.kinds:
            task = self._tasks.get((kind, namespace))
            if task is None or task.done():
                self._starting(kind, namespace)
                self._tasks[(kind, namespace)] = asyncio.get_running_loop().create_task(
                    self._run(kind, namespace), name=f"watch {kind} in {namespace}"
                )

    def watched(self) -> set[str]:
        """The namespaces being watched."""
        return {namespace for _, namespace in self._tasks}

    async def stop(self, namespace: str) -> None:
        """Stop watching ``namespace`` and forget what was seen there."""
        tasks = [self._tasks.pop((kind, namespace), None) for kind in self.kinds]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._forget(namespace)

    async def close(self) -> None:
        """Stop every watch."""
        for namespace in sorted(self.watched()):
            await self.stop(namespace)

    def _starting(self, kind: str, namespace: str) -> None:
        """Called before a watch task starts."""

    def _forget(self, namespace: str) -> None:
        """Drop what was kept of ``namespace`` (its watches have stopped)."""

    async def _watch(self, kind: str, namespace: str) -> None:
        raise NotImplementedError

    async def _run(self, kind: str, namespace: str) -> None:
        while True:
            try:
                await self._watch(kind, namespace)
            except KubeError as exc:
                logger.info("watch of %s in %s ended (%s); restarting", kind, namespace, exc)
            except Exception:
                logger.exception("watch of %s in %s failed; restarting", kind, namespace)
            await asyncio.sleep(self.retry_delay)


class ReferenceWatches(_Watches):
    """Per-namespace, label-selected lists and watches of referenced Secrets and ConfigMaps.

    Each kind is listed and then watched from the listing's version (listed again after a
    watch ends), and the operator keeps the latest of each labelled object: a pass reads a
    referenced object from here (:meth:`cached`) once its namespace is listed, instead of
    asking the API server, so the periodic checks of a thousand agents read no Secret.

    What a pass built from is noted (:meth:`note`, a digest of the data); a listed or watched
    version whose data differs from it calls ``on_change``, and so does an object that is
    deleted or loses the label (also while the watch was down: the next listing lacks it).
    """

    kinds = KINDS

    def __init__(
        self,
        kube: Kube,
        on_change: OnChange,
        *,
        server_timeout: int = 300,
        retry_delay: float = 5.0,
    ) -> None:
        super().__init__(kube, server_timeout=server_timeout, retry_delay=retry_delay)
        self.on_change = on_change
        #: ``(kind, namespace, name)`` -> :func:`data_digest` of what the last pass read.
        self._digests: dict[tuple[str, str, str], str] = {}
        #: ``(kind, namespace, name)`` -> the latest labelled object listed or watched.
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._synced: dict[tuple[str, str], asyncio.Event] = {}
        self._pending: set[asyncio.Task[None]] = set()

    # -- what the passes tell and ask ---------------------------------------------------------

    def cached(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as last listed or watched (it carries the label), once its kind is listed
        in ``namespace``; ``None`` when it is not known here (read it from the API server)."""
        synced = self._synced.get((kind, namespace))
        if synced is None or not synced.is_set():
            return None
        return self._objects.get((kind, namespace, name))

    def note(self, kind: str, namespace: str, obj: Mapping[str, Any]) -> None:
        """A pass read (and labelled) ``obj``: a later version with other data is a change, even
        when the watch starts only after it (its listing holds the objects as they are). When
        the watch already holds other data than the pass read, a change is reported at once:
        the pass that follows reads what the watch holds."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        key = (kind, namespace, name)
        digest = data_digest(obj)
        self._digests[key] = digest
        known = self._objects.get(key)
        if known is not None and data_digest(known) != digest:
            self._changed(key)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._digests.pop((kind, namespace, name), None)
        self._objects.pop((kind, namespace, name), None)

    def labelled(self, namespace: str) -> set[tuple[str, str]]:
        """``(kind, name)`` of the objects in ``namespace`` known to carry the label."""
        return {
            (kind, name) for kind, ns, name in [*self._digests, *self._objects] if ns == namespace
        }

    def _starting(self, kind: str, namespace: str) -> None:
        self._synced.setdefault((kind, namespace), asyncio.Event())

    def _forget(self, namespace: str) -> None:
        for store in (self._digests, self._objects):
            for key in [key for key in store if key[1] == namespace]:
                del store[key]
        for kind in KINDS:
            self._synced.pop((kind, namespace), None)

    async def close(self) -> None:
        await super().close()
        for task in list(self._pending):
            task.cancel()

    # -- the lists and watches ----------------------------------------------------------------

    async def _watch(self, kind: str, namespace: str) -> None:
        """List the kind (what is known follows the listing), then watch from that version."""
        labels = {REFERENCED_LABEL: REFERENCED_VALUE}
        # What was known before this listing and is not in it went meanwhile.
        stale = {key for key in [*self._digests, *self._objects] if key[:2] == (kind, namespace)}
        listed: list[dict[str, Any]] = []

        def record(obj: dict[str, Any]) -> None:
            listed.append(obj)
            stale.discard((kind, namespace, str(obj["metadata"]["name"])))

        version = await self.kube.list_labelled(
            KINDS[kind], kind, namespace, labels=labels, each=record
        )
        for key in sorted(stale):
            self._gone(key)
        for obj in listed:
            self._seen(kind, namespace, obj)
        self._synced[(kind, namespace)].set()
        async for event, obj in self.kube.watch(
            KINDS[kind],
            kind,
            namespace,
            labels=labels,
            server_timeout=self.server_timeout,
            resource_version=version,
        ):
            await self.handle(kind, namespace, event, obj)

    async def handle(self, kind: str, namespace: str, event: str, obj: Mapping[str, Any]) -> None:
        """One watch event: keep the object; report a change of its data, or its going."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        if event == "DELETED" or not is_labelled(obj):
            # Deleted, or no longer selected (the label was removed): the API server sends
            # DELETED for both.
            self._gone((kind, namespace, name))
        else:
            self._seen(kind, namespace, obj)

    def _seen(self, kind: str, namespace: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (kind, namespace, str(meta.get("name", "")))
        kept: dict[str, Any] = {
            "metadata": {
                "name": meta.get("name"),
                "namespace": namespace,
                "labels": dict(meta.get("labels") or {}),
                "resourceVersion": meta.get("resourceVersion"),
            }
        }
        for field_name in ("data", "binaryData"):
            if obj.get(field_name):
                kept[field_name] = dict(obj[field_name])
        self._objects[key] = kept
        digest = data_digest(kept)
        old = self._digests.get(key)
        if old is not None and old != digest:
            # An object no pass read yet was used for nothing: only a known one is a change.
            self._digests[key] = digest
            self._changed(key)

    def _gone(self, key: tuple[str, str, str]) -> None:
        self._objects.pop(key, None)
        if self._digests.pop(key, None) is not None:
            self._changed(key)

    def _changed(self, key: tuple[str, str, str]) -> None:
        """Call ``on_change`` in a task of its own (the watch goes on reading meanwhile)."""
        task = asyncio.get_running_loop().create_task(
            self._report(*key), name=f"change of {key[0]} {key[1]}/{key[2]}"
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _report(self, kind: str, namespace: str, name: str) -> None:
        try:
            await self.on_change(kind, namespace, name)
        except Exception:
            logger.exception("could not act on the change of %s %s/%s", kind, namespace, name)


# -------------------------------------------------------------------------------------------------
# the children


#: ``on_rollout(namespace, agent)``: a Deployment of the agent changed (after the listing).
OnRollout = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class ChildRecord:
    """What the operator keeps of one child: whose it is, what it was applied with, and for a
    Deployment where its rollout stands."""

    controller: str | None
    applied_hash: str
    instance: str
    rollout: RolloutState | None = None


def child_record(obj: Mapping[str, Any]) -> ChildRecord:
    meta = obj.get("metadata") or {}
    controller = next(
        (
            str(ref.get("uid"))
            for ref in meta.get("ownerReferences") or []
            if ref.get("controller")
            and ref.get("kind") == "WhatsAppAgent"
            and ref.get("apiVersion") == AGENT_API_VERSION
        ),
        None,
    )
    return ChildRecord(
        controller=controller,
        applied_hash=applied_hash(obj),
        instance=str((meta.get("labels") or {}).get(LABEL_INSTANCE, "")),
        rollout=rollout_state(obj) if obj.get("kind") == "Deployment" else None,
    )


class ChildWatches(_Watches):
    """Per-namespace, label-selected lists and watches of the agents' children.

    In each namespace where agents live, every kind of child the operator makes (but the
    generated Secret and the ServiceMonitor) is listed and then watched with the label every
    child carries, ``app.kubernetes.io/managed-by=released-operator``, as the selector; of each
    object only a :class:`ChildRecord` is kept. A pass then knows which children exist, whose
    they are and with which hash they were applied without reading them, and a restarted
    operator looks at unchanged agents without a request per child. A Deployment's change
    (after the listing) calls ``on_rollout(namespace, agent)``.
    """

    kinds = CHILD_KINDS

    def __init__(
        self,
        kube: Kube,
        on_rollout: OnRollout | None = None,
        *,
        server_timeout: int = 300,
        retry_delay: float = 5.0,
    ) -> None:
        super().__init__(kube, server_timeout=server_timeout, retry_delay=retry_delay)
        self.on_rollout = on_rollout
        self._records: dict[tuple[str, str, str], ChildRecord] = {}
        self._synced: dict[tuple[str, str], asyncio.Event] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def _starting(self, kind: str, namespace: str) -> None:
        self._synced.setdefault((kind, namespace), asyncio.Event())

    def synced(self, namespace: str) -> bool:
        """Whether every kind of ``namespace`` has been listed (absent means absent then)."""
        events = [self._synced.get((kind, namespace)) for kind in CHILD_KINDS]
        return all(event is not None and event.is_set() for event in events)

    async def wait_synced(self, namespace: str, limit: float) -> bool:
        """Start watching ``namespace`` and wait (at most ``limit`` seconds) for its listing."""
        self.start(namespace)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                for kind in CHILD_KINDS:
                    await self._synced[(kind, namespace)].wait()
        return self.synced(namespace)

    def get(self, kind: str, namespace: str, name: str) -> ChildRecord | None:
        return self._records.get((kind, namespace, name))

    def rollouts(self, namespace: str, names: list[str]) -> list[RolloutState] | None:
        """The rollouts of the Deployments ``names`` (``None`` until the namespace is listed;
        a Deployment that does not exist has not rolled out)."""
        if not self.synced(namespace):
            return None
        states = []
        for name in names:
            record = self._records.get(("Deployment", namespace, name))
            rollout = record.rollout if record is not None else None
            states.append(rollout or RolloutState(name, 1, 0, 0, observed_current=False))
        return states

    def _forget(self, namespace: str) -> None:
        for key in [key for key in self._records if key[1] == namespace]:
            del self._records[key]
        for kind in CHILD_KINDS:
            self._synced.pop((kind, namespace), None)

    async def close(self) -> None:
        await super().close()
        for task in list(self._pending):
            task.cancel()

    async def _api_version(self, kind: str, namespace: str) -> str:
        if kind == "CronJob":
            return await self.kube.cronjob_api_version(namespace)
        if kind == "PodDisruptionBudget":
            return await self.kube.pdb_api_version(namespace)
        return CHILD_KINDS[kind]

    async def _watch(self, kind: str, namespace: str) -> None:
        """List the kind (the records follow the listing), then watch from that version."""
        labels = {LABEL_MANAGED_BY: MANAGED_BY}
        api_version = await self._api_version(kind, namespace)
        stale = {key for key in self._records if key[:2] == (kind, namespace)}

        def record(obj: dict[str, Any]) -> None:
            name = str(obj["metadata"]["name"])
            self._records[(kind, namespace, name)] = child_record({**obj, "kind": kind})
            stale.discard((kind, namespace, name))

        version = await self.kube.list_labelled(
            api_version, kind, namespace, labels=labels, each=record
        )
        for key in stale:
            del self._records[key]
        self._synced[(kind, namespace)].set()
        async for event, obj in self.kube.watch(
            api_version,
            kind,
            namespace,
            labels=labels,
            server_timeout=self.server_timeout,
            resource_version=version,
        ):
            await self.handle(kind, namespace, event, obj)

    async def handle(self, kind: str, namespace: str, event: str, obj: Mapping[str, Any]) -> None:
        """One watch event: the record follows the object."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        record = child_record({**obj, "kind": kind})
        if event == "DELETED":
            self._records.pop((kind, namespace, name), None)
        else:
            self._records[(kind, namespace, name)] = record
        if kind == "Deployment" and record.instance and self.on_rollout is not None:
            # In a task of its own: the watch goes on reading meanwhile.
            task = asyncio.get_running_loop().create_task(
                self._rolled(namespace, record.instance), name=f"rollout of {namespace}/{name}"
            )
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _rolled(self, namespace: str, agent: str) -> None:
        assert self.on_rollout is not None
        try:
            await self.on_rollout(namespace, agent)
        except Exception:
            logger.exception("could not act on the rollout of %s/%s", namespace, agent)
