"""What was applied: a hash of each child's wanted manifest, recorded on the child.

Before a child is applied, :func:`with_applied_hash` stamps its manifest with
:data:`APPLIED_HASH`, a hash of the manifest itself. A pass reads every child anyway (the
ownership check, :func:`whatsapp_operator.reconcile.tenancy.check_ownership`), so it knows the
hash each one was last applied with, and applies only those whose wanted manifest differs (or
that do not exist): an unchanged child costs no write, and a restarted operator re-applies
nothing. A field someone else edits on a child keeps the edit until the operator wants
something different of that child; deleting the child (or the annotation) makes the next pass
apply it again.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from . import GROUP

#: The annotation holding the hash of the manifest a child was last applied with.
APPLIED_HASH = f"{GROUP}/applied-hash"


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """A hash of ``manifest`` without its :data:`APPLIED_HASH` annotation."""
    meta = dict(manifest.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_HASH}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    canonical = json.dumps({**manifest, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def with_applied_hash(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` annotated with its :func:`manifest_hash`."""
    stamped = copy.deepcopy(dict(manifest))
    meta = stamped.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: manifest_hash(manifest)}
    return stamped


def applied_hash(obj: Mapping[str, Any]) -> str:
    """The :data:`APPLIED_HASH` of a live object (``""`` when it has none)."""
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(APPLIED_HASH, ""))


def needs_apply(manifest: Mapping[str, Any], live: Mapping[tuple[str, str], str]) -> bool:
    """Whether the stamped ``manifest`` differs from what ``live`` says was last applied
    (``live``: ``(kind, name)`` -> applied hash of each existing child)."""
    key = (str(manifest["kind"]), str(manifest["metadata"]["name"]))
    wanted = applied_hash(manifest)
    return not wanted or live.get(key) != wanted
