"""Helpers for the operator's unit tests: the CRD file, its schema and a validator for it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[3]
CRD_PATH = ROOT / "crds" / "whatsappagent.yaml"
EXAMPLES = ROOT / "examples"


@lru_cache(maxsize=1)
def crd() -> dict[str, Any]:
    """The parsed CRD."""
    data: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return data


def version() -> dict[str, Any]:
    """The one served version of the CRD."""
    versions: list[dict[str, Any]] = crd()["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def schema() -> dict[str, Any]:
    """``openAPIV3Schema`` of the served version."""
    result: dict[str, Any] = version()["schema"]["openAPIV3Schema"]
    return result


def spec_schema() -> dict[str, Any]:
    """The schema of ``spec``."""
    result: dict[str, Any] = schema()["properties"]["spec"]
    return result


def validator() -> jsonschema.Draft4Validator:
    """A JSON-schema validator for whole resources.

    Kubernetes' OpenAPI v3 schemas use draft-4 semantics (boolean ``exclusiveMinimum``);
    the ``x-kubernetes-*`` extensions are ignored by jsonschema, as they should be here.
    """
    return jsonschema.Draft4Validator(schema())


def documents(path: Path) -> list[dict[str, Any]]:
    """All YAML documents of a file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def agents_in_examples() -> list[dict[str, Any]]:
    """Every WhatsAppAgent in ``examples/``."""
    return [
        doc
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in documents(path)
        if doc.get("kind") == "WhatsAppAgent"
    ]
