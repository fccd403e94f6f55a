"""Watching the Secrets and ConfigMaps that agents reference, selected by the API server.

The operator does not watch every Secret and ConfigMap it may read. When a pass reads one that
an agent references (the Meta, OpenAI and database Secrets, the FAQ ConfigMap), it labels it
:data:`REFERENCED_LABEL` (``whatsapp.released.io/referenced=true``) unless it is labelled
already, and :class:`ReferenceWatches` watches, in each namespace where agents reference
something, only the objects with that label: the selector is part of the watch request, so the
API server sends nothing else. There is no cluster-wide list or watch of Secrets in any mode;
a namespace's watches stop when no agent there references anything any more, and the label is
taken off objects no agent references (:func:`whatsapp_operator.reconcile.references.release`).

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
from typing import Any

from . import GROUP
from .kube import Kube, KubeError

logger = logging.getLogger("whatsapp_operator")

#: The label the operator puts on the Secrets and ConfigMaps that agents reference.
REFERENCED_LABEL = f"{GROUP}/referenced"
REFERENCED_VALUE = "true"
#: The kinds watched, with their apiVersion.
KINDS: dict[str, str] = {"Secret": "v1", "ConfigMap": "v1"}

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


class ReferenceWatches:
    """Per-namespace, label-selected watches of referenced Secrets and ConfigMaps."""

    def __init__(
        self,
        kube: Kube,
        on_change: OnChange,
        *,
        server_timeout: int = 300,
        retry_delay: float = 5.0,
    ) -> None:
        self.kube = kube
        self.on_change = on_change
        self.server_timeout = server_timeout
        self.retry_delay = retry_delay
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: ``(kind, namespace, name)`` -> :func:`data_digest` of each labelled object seen.
        self._digests: dict[tuple[str, str, str], str] = {}

    # -- what the passes tell and ask ---------------------------------------------------------

    def start(self, namespace: str) -> None:
        """Watch ``namespace`` (nothing happens when it is watched already)."""
        for kind in KINDS:
            task = self._tasks.get((kind, namespace))
            if task is None or task.done():
                self._tasks[(kind, namespace)] = asyncio.get_running_loop().create_task(
                    self._run(kind, namespace), name=f"watch {kind} in {namespace}"
                )

    def watched(self) -> set[str]:
        """The namespaces being watched."""
        return {namespace for _, namespace in self._tasks}

    def note(self, kind: str, namespace: str, obj: Mapping[str, Any]) -> None:
        """A pass read (and labelled) ``obj``: a later event with other data is a change, even
        when the watch starts only after it (its first events are the objects as they are)."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        self._digests[(kind, namespace, name)] = data_digest(obj)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._digests.pop((kind, namespace, name), None)

    def labelled(self, namespace: str) -> set[tuple[str, str]]:
        """``(kind, name)`` of the objects in ``namespace`` known to carry the label."""
        return {(kind, name) for kind, ns, name in self._digests if ns == namespace}

    async def stop(self, namespace: str) -> None:
        """Stop watching ``namespace`` and forget what was seen there."""
        tasks = [self._tasks.pop((kind, namespace), None) for kind in KINDS]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for key in [key for key in self._digests if key[1] == namespace]:
            del self._digests[key]

    async def close(self) -> None:
        """Stop every watch."""
        for namespace in sorted(self.watched()):
            await self.stop(namespace)

    # -- the watches --------------------------------------------------------------------------

    async def _run(self, kind: str, namespace: str) -> None:
        """Watch one kind in one namespace until cancelled; start again after an error."""
        while True:
            try:
                async for event, obj in self.kube.watch(
                    KINDS[kind],
                    kind,
                    namespace,
                    labels={REFERENCED_LABEL: REFERENCED_VALUE},
                    server_timeout=self.server_timeout,
                ):
                    await self.handle(kind, namespace, event, obj)
            except KubeError as exc:
                logger.info("watch of %s in %s ended (%s); restarting", kind, namespace, exc)
            except Exception:
                logger.exception("watch of %s in %s failed; restarting", kind, namespace)
            await asyncio.sleep(self.retry_delay)

    async def handle(self, kind: str, namespace: str, event: str, obj: Mapping[str, Any]) -> None:
        """One watch event: call ``on_change`` when the data changed or the object went."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        key = (kind, namespace, name)
        if event == "DELETED" or not is_labelled(obj):
            # Deleted, or no longer selected (the label was removed): the API server sends
            # DELETED for both.
            changed = self._digests.pop(key, None) is not None
        else:
            digest = data_digest(obj)
            old = self._digests.get(key)
            self._digests[key] = digest
            # An object first seen now was read by no pass yet: nothing was built from it.
            changed = old is not None and old != digest
        if not changed:
            return
        try:
            await self.on_change(kind, namespace, name)
        except Exception:
            logger.exception("could not act on the change of %s %s/%s", kind, namespace, name)
