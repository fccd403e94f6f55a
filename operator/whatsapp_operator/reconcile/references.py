"""Asking for a reconciliation without a spec change.

- When a Secret or ConfigMap that agents reference changes, :func:`touch_referencing` bumps each
  such agent's :data:`REFS_ANNOTATION` to a checksum of the versions of everything it references
  (so kopf sees an update and reconciles it); an unchanged checksum writes nothing.
- :func:`request_reconcile` sets :data:`RECONCILE_ANNOTATION` to the current time (after a
  rotation step, or once the web tier is up and the webhook can be registered).
- :func:`release` takes the watch label (:data:`~whatsapp_operator.watching.REFERENCED_LABEL`)
  off the Secrets and ConfigMaps of a namespace that no agent references any more, and stops
  the namespace's watches when nothing there is referenced.

Both annotations carry nothing derived from secret values.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import GROUP
from .. import status as st
from ..kube import Kube, KubeError
from ..watching import KINDS, REFERENCED_LABEL, REFERENCED_VALUE, ReferenceWatches
from .inputs import referenced_names

logger = logging.getLogger("whatsapp_operator")

#: Annotation bumped when a referenced Secret or ConfigMap changes; its change is an update.
REFS_ANNOTATION = f"{GROUP}/refs-checksum"
#: Annotation set to the time a reconciliation was asked for.
RECONCILE_ANNOTATION = f"{GROUP}/reconcile-requested"


async def refs_checksum(kube: Kube, namespace: str, spec: Mapping[str, Any]) -> str:
    """A hash over the ``uid`` and ``resourceVersion`` of everything the agent references
    (missing ones count too)."""
    digest = hashlib.sha256()
    for kind, ref in sorted(set(referenced_names(spec))):
        obj = await kube.get("v1", kind, namespace, ref)
        meta = (obj or {}).get("metadata") or {}
        digest.update(
            json.dumps([kind, ref, meta.get("uid"), meta.get("resourceVersion")]).encode()
        )
    return digest.hexdigest()[:32]


async def touch_agent(kube: Kube, namespace: str, name: str) -> bool:
    """Bump the agent's refs annotation when its inputs changed; whether it was bumped."""
    body = await kube.get_agent(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return False
    checksum = await refs_checksum(kube, namespace, body.get("spec") or {})
    annotations = body["metadata"].get("annotations") or {}
    if annotations.get(REFS_ANNOTATION) == checksum:
        return False
    await kube.annotate_agent(namespace, name, {REFS_ANNOTATION: checksum})
    logger.info("inputs of %s/%s changed: reconciling", namespace, name)
    return True


async def touch_referencing(kube: Kube, namespace: str, agents: Iterable[str]) -> None:
    """:func:`touch_agent` for each of ``agents`` (those that reference a changed object)."""
    for agent in sorted(set(agents)):
        try:
            await touch_agent(kube, namespace, agent)
        except KubeError as exc:
            logger.warning("could not mark %s/%s for reconciliation: %s", namespace, agent, exc)


async def request_reconcile(kube: Kube, namespace: str, name: str) -> None:
    """Ask for a reconciliation without a spec change (an annotation with the time)."""
    await kube.annotate_agent(namespace, name, {RECONCILE_ANNOTATION: st.now_iso()})


async def release(
    kube: Kube,
    watches: ReferenceWatches,
    namespace: str,
    referenced: Callable[[], set[tuple[str, str]]],
) -> list[tuple[str, str]]:
    """Unlabel the objects of ``namespace`` that ``referenced()`` (``(kind, name)`` of what
    the namespace's agents reference now) no longer holds; stop watching the namespace when it
    holds nothing. Returns what was unlabelled.

    An agent that starts referencing an object while it is being unlabelled is in
    ``referenced()`` by then (kopf indexes an agent before its pass runs): the label is put
    back.
    """
    released: list[tuple[str, str]] = []
    for kind, name in sorted(watches.labelled(namespace) - referenced()):
        watches.forget(kind, namespace, name)
        try:
            await _label(kube, kind, namespace, name, None)
        except KubeError as exc:
            if not exc.not_found:
                logger.warning("could not unlabel %s %s/%s: %s", kind, namespace, name, exc)
            continue
        released.append((kind, name))
        if (kind, name) in referenced():
            await _label(kube, kind, namespace, name, REFERENCED_VALUE)
    if not referenced():
        await watches.stop(namespace)
    return released


async def _label(kube: Kube, kind: str, namespace: str, name: str, value: str | None) -> None:
    patch = {"metadata": {"labels": {REFERENCED_LABEL: value}}}
    await kube.merge_patch(KINDS[kind], kind, namespace, name, patch)
