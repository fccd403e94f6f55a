#!/usr/bin/env python3
"""Generate docs/crd-reference.md from crds/whatsappagent.yaml (the CRD's OpenAPI schema).

Usage:
    python hack/gen_crd_docs.py           # (re)write docs/crd-reference.md
    python hack/gen_crd_docs.py --check   # exit 1 when the committed file is out of date

Every field under ``spec`` and ``status`` becomes one row: its path, type, default, the
validation the API server enforces (pattern, lengths, bounds, enum, item counts) and its
description. tests/unit/test_docs.py renders the reference in memory and compares it with the
committed file, so a CRD change without a regenerated reference fails the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "crds" / "whatsappagent.yaml"
DOC_PATH = ROOT / "docs" / "crd-reference.md"

Schema = Mapping[str, Any]

#: Descriptions for fields whose schema has none (the schema's own description always wins).
#: Better: move them into the CRD, where ``kubectl explain`` shows them too. A test fails when a
#: key here names a field the CRD no longer has.
FALLBACK_DESCRIPTIONS: dict[str, str] = {
    "spec.faqsFrom.configMapKeyRef": "The ConfigMap key that holds the FAQs.",
    "spec.faqsFrom.configMapKeyRef.name": "Name of the ConfigMap (in the agent's namespace).",
    "spec.faqsFrom.configMapKeyRef.key": "Key of the ConfigMap whose value is the FAQ list.",
    "spec.secrets.meta.name": "Name of the Secret (keys accessToken, appSecret).",
    "spec.secrets.openai.name": "Name of the Secret (key apiKey, optional baseUrl).",
    "spec.database.secretRef.name": "Name of the Secret (in the agent's namespace).",
    "spec.database.secretRef.key": "Key of the Secret whose value is the PostgreSQL URL.",
    "spec.ingress.webhook": "Registration of the callback URL with Meta.",
    "spec.web.replicas": "Web pods (uvicorn); a PodDisruptionBudget keeps one up when > 1.",
    "spec.web.resources.requests": "Resource requests, e.g. cpu: 100m, memory: 256Mi.",
    "spec.web.resources.limits": "Resource limits, e.g. memory: 512Mi.",
    "spec.worker.replicas": "Worker pods (Celery).",
    "spec.worker.resources.requests": "Resource requests, e.g. cpu: 100m, memory: 256Mi.",
    "spec.worker.resources.limits": "Resource limits, e.g. memory: 512Mi.",
    "spec.redis.resources.requests": "Resource requests, e.g. cpu: 50m, memory: 64Mi.",
    "spec.redis.resources.limits": "Resource limits, e.g. memory: 256Mi.",
    "spec.retention": "How long messages are kept (the bot's RETENTION_DAYS).",
    "spec.rotation": "Rotation of the operator-owned credentials in the NAME-credentials Secret.",
    "status.observedGeneration": "The metadata.generation the operator last reconciled.",
    "status.conditions[].status": "True, False or Unknown.",
    "status.conditions[].reason": "CamelCase reason, e.g. InvalidSpec, SecretNotFound, "
    "RolloutInProgress, CleanupFailed.",
    "status.conditions[].message": "For people; never holds a secret.",
    "status.conditions[].lastTransitionTime": "When status last changed.",
    "status.conditions[].observedGeneration": "The generation this condition was computed for.",
    "status.webhookUrl": "https://HOST/webhook while Meta's callback override points at it.",
    "status.rotation.phase": "Idle, Started or Finishing.",
    "status.rotation.rotationId": "Id of the rotation in progress (its start time, UTC).",
    "status.rotation.startedAt": "When the rotation in progress started.",
    "status.knowledge": "The OpenAI vector store that holds the FAQs (file_search).",
    "status.knowledge.vectorStoreId": "OpenAI vector store id (given to the pods).",
    "status.knowledge.fileId": "OpenAI file id of the uploaded FAQs.",
    "status.knowledge.faqHash": "Hash of the FAQs the vector store holds.",
    "status.lastRotation": "When the last completed rotation started.",
    "status.nextRotation": "When the next rotation is due.",
    "status.database": "Reserved in the schema; the current operator does not write it.",
    "status.database.name": "Reserved (not written).",
    "status.database.role": "Reserved (not written).",
}


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        crd = yaml.safe_load(handle)
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path}: not a CustomResourceDefinition")
    return crd


def _code(value: str) -> str:
    """An inline code span that survives a Markdown table cell."""
    return "`" + value.replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def type_of(schema: Schema) -> str:
    """A short type name: ``string``, ``integer (int64)``, ``[]object``, ``map[string]string``."""
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = schema.get("type")
    if kind == "array":
        return "[]" + type_of(schema.get("items") or {})
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return "map[string]" + type_of(schema["additionalProperties"])
    if kind is None and "anyOf" in schema:
        return " or ".join(type_of(option) for option in schema["anyOf"])
    name = str(kind or "any")
    if schema.get("format"):
        name += f" ({schema['format']})"
    return name


def validation_of(schema: Schema) -> list[str]:
    """The API server's checks on this value, as short phrases."""
    rules: list[str] = []
    if "enum" in schema:
        rules.append("one of " + ", ".join(_code(str(v)) for v in schema["enum"]))
    if "pattern" in schema:
        rules.append("pattern " + _code(str(schema["pattern"])))
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None or high is not None:
        rules.append(_bounds("length", low, high))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None or high is not None:
        rules.append(
            _bounds(
                "value",
                low,
                high,
                exclusive_low=bool(schema.get("exclusiveMinimum")),
                exclusive_high=bool(schema.get("exclusiveMaximum")),
            )
        )
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None or high is not None:
        rules.append(_bounds("items", low, high))
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        rules.append("unknown fields kept")
    return rules


def _bounds(
    what: str,
    low: Any,
    high: Any,
    *,
    exclusive_low: bool = False,
    exclusive_high: bool = False,
) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if exclusive_low else '≥'} {low}")
    if high is not None:
        parts.append(f"{'<' if exclusive_high else '≤'} {high}")
    return f"{what} " + ", ".join(parts)


def default_of(schema: Schema) -> str:
    if "default" not in schema:
        return ""
    value = schema["default"]
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return _code(text)


def walk(schema: Schema, path: str, required: bool = False) -> Iterator[dict[str, str]]:
    """One row for ``schema`` at ``path`` and, depth first, for everything beneath it."""
    rules = validation_of(schema)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        rules += ["values: " + rule for rule in validation_of(extra)]
    items = schema.get("items") if schema.get("type") == "array" else None
    if isinstance(items, Mapping) and not items.get("properties"):
        rules += ["items: " + rule for rule in validation_of(items)]
    yield {
        "path": path,
        "type": type_of(schema),
        "required": "yes" if required else "",
        "default": default_of(schema),
        "validation": "; ".join(rules),
        "description": _cell(str(schema.get("description") or FALLBACK_DESCRIPTIONS.get(path, ""))),
    }
    children: Schema = schema.get("properties") or {}
    child_required = set(schema.get("required") or [])
    prefix = path
    if isinstance(items, Mapping) and items.get("properties"):
        children = items["properties"]
        child_required = set(items.get("required") or [])
        prefix = path + "[]"
    for name, child in children.items():
        yield from walk(child, f"{prefix}.{name}", name in child_required)


def _table(rows: list[dict[str, str]]) -> list[str]:
    lines = [
        "| Field | Type | Required | Default | Validation | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {_code(row['path'])} | {row['type']} | {row['required']} | {row['default']} "
            f"| {row['validation']} | {row['description']} |"
        )
    return lines


def render(crd: Mapping[str, Any]) -> str:
    """The reference page for ``crd`` (every served version)."""
    spec = crd["spec"]
    names = spec["names"]
    out = [
        f"# {names['kind']} field reference",
        "",
        "<!-- Generated by hack/gen_crd_docs.py from crds/whatsappagent.yaml: do not edit by hand."
        " Run `python hack/gen_crd_docs.py` after changing the CRD"
        " (tests/unit/test_docs.py fails while this file is out of date). -->",
        "",
        f"- API group: `{spec['group']}`; kind `{names['kind']}`, plural `{names['plural']}`, "
        f"short names {', '.join(_code(n) for n in names.get('shortNames', []))}, "
        f"categories {', '.join(_code(c) for c in names.get('categories', []))}; "
        f"{spec['scope'].lower()}.",
        "- Validation in this table is enforced by the API server (OpenAPI schema). Cross-field "
        "rules (for example `faqs` or `faqsFrom`, `ingress.webhook.register` needs "
        "`ingress.host`) are checked by the operator, which reports `Ready=False` with reason "
        "`InvalidSpec`.",
        "- `Required` means required whenever the enclosing object is present.",
        "",
    ]
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        flags = [f for f in ("served", "storage") if version.get(f)]
        out += [f"## {spec['group']}/{version['name']} ({', '.join(flags)})", ""]
        columns = version.get("additionalPrinterColumns") or []
        if columns:
            out += ["`kubectl get` columns:", ""]
            out += ["| Column | Type | JSONPath |", "| --- | --- | --- |"]
            out += [f"| {c['name']} | {c['type']} | {_code(c['jsonPath'])} |" for c in columns]
            out.append("")
        top_required = set(schema.get("required") or [])
        for part, title in (("spec", "Spec"), ("status", "Status")):
            if part not in schema.get("properties", {}):
                continue
            rows = list(walk(schema["properties"][part], part, part in top_required))
            out += [f"### {title}", ""]
            out += _table(rows)
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("--crd", type=Path, default=CRD_PATH)
    parser.add_argument("--out", type=Path, default=DOC_PATH)
    args = parser.parse_args(argv)
    text = render(load_crd(args.crd))
    current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
    if args.check:
        if current != text:
            print(f"{args.out} is out of date: run python hack/gen_crd_docs.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
