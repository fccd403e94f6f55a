#!/usr/bin/env python3
"""Extract the schemas of the endpoints the project uses from the providers' OpenAPI documents.

The fakes of Meta's Graph API and OpenAI (``released/fakes``) validate every request against the
published OpenAPI documents in ``../shared/contracts``. Shipped code cannot read ``../shared``,
so this script copies what the fakes need into ``released/fakes/contracts/{meta,openai}.json``:
for each operation the project calls, its parameters, request body and success response
schemas, plus every component they reference (transitively), with annotations (descriptions,
examples inside schemas, ``x-*`` extensions) dropped. The output names the source document,
its upstream repository, commit and license, and lists every transformation applied to make the
published schema usable for validation (each with its reason).

    python hack/extract-contracts.py                    # regenerate from ../shared/contracts
    python hack/extract-contracts.py --contracts DIR    # or from another copy
    python hack/extract-contracts.py --check            # exit 1 if the files are out of date

``tests/unit/test_contracts.py`` runs ``--check`` when ``../shared/contracts`` is present.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "released" / "fakes" / "contracts"

#: Where ``../shared/contracts`` is for a checkout (and for a git worktree one level deeper).
CANDIDATES = [
    REPO.parent / "shared" / "contracts",
    REPO.parent.parent / "shared" / "contracts",
]

SOURCES: dict[str, dict[str, Any]] = {
    "meta": {
        "file": "meta-business-messaging-api_v23.0.yaml",
        "upstream": "https://github.com/facebook/openapi",
        "path": "business-messaging-api_v23.0.yaml",
        "commit": "ecba623",
        "date": "2025-11-21",
        "license": "MIT",
        "license_file": "LICENSE-meta-openapi",
        # The error envelope of every refusal (the operations' 4xx answers).
        "components": ["GraphAPIError"],
        # The Graph API calls of bot/whatsapp/client.py and
        # operator/whatsapp_operator/meta_webhook.py (and the subscription check of issue 8).
        "operations": [
            ("post", "/{Version}/{Phone-Number-ID}/messages"),
            ("get", "/{Version}/{Phone-Number-ID}"),
            ("post", "/{Version}/{Phone-Number-ID}"),
            ("get", "/{Version}/{WABA-ID}/subscribed_apps"),
            ("post", "/{Version}/{WABA-ID}/subscribed_apps"),
            ("delete", "/{Version}/{WABA-ID}/subscribed_apps"),
        ],
    },
    "openai": {
        "file": "openai-openapi.yaml",
        "upstream": "https://github.com/openai/openai-openapi",
        "path": "openapi.yaml",
        "commit": "f85dbe2",
        "date": "2026-08-21",
        "license": "MIT",
        "license_file": "LICENSE-openai-openapi",
        "components": ["ErrorResponse"],
        # bot/llm/client.py (Responses), operator/whatsapp_operator/knowledge.py (Files, Vector
        # Stores) and the model check (Models); Conversations for conversation state.
        "operations": [
            ("post", "/responses"),
            ("get", "/responses/{response_id}"),
            ("delete", "/responses/{response_id}"),
            ("post", "/conversations"),
            ("get", "/conversations/{conversation_id}"),
            ("delete", "/conversations/{conversation_id}"),
            ("post", "/conversations/{conversation_id}/items"),
            ("get", "/conversations/{conversation_id}/items"),
            ("post", "/files"),
            ("get", "/files"),
            ("get", "/files/{file_id}"),
            ("delete", "/files/{file_id}"),
            ("post", "/vector_stores"),
            ("get", "/vector_stores"),
            ("get", "/vector_stores/{vector_store_id}"),
            ("post", "/vector_stores/{vector_store_id}"),
            ("delete", "/vector_stores/{vector_store_id}"),
            ("post", "/vector_stores/{vector_store_id}/files"),
            ("get", "/vector_stores/{vector_store_id}/files"),
            ("get", "/vector_stores/{vector_store_id}/files/{file_id}"),
            ("delete", "/vector_stores/{vector_store_id}/files/{file_id}"),
            ("post", "/vector_stores/{vector_store_id}/file_batches"),
            ("get", "/vector_stores/{vector_store_id}/file_batches/{batch_id}"),
            ("post", "/vector_stores/{vector_store_id}/search"),
            ("get", "/models"),
            ("get", "/models/{model}"),
        ],
    },
}

#: Keys that only annotate a schema; dropped to keep the extract small.
ANNOTATIONS = {"description", "example", "examples", "title", "summary", "deprecated",
               "externalDocs", "default"}
#: Schema keywords whose value maps names to schemas (their keys are names, not keywords).
NAMED_SCHEMAS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}


# -- transformations that make a published schema usable for validation ----------------------


def _flatten_closed_allof(schema: dict[str, Any], resolve: Any) -> dict[str, Any] | None:
    """``allOf`` branches with ``additionalProperties: false`` become one object.

    In JSON Schema each ``allOf`` branch checks ``additionalProperties`` against its own
    ``properties`` only, so ``allOf: [base, {additionalProperties: false, ...}]`` refuses every
    property of ``base`` — every request, the document's own examples included. The authors mean
    "these properties together and no other", which one merged object says.
    """
    branches = schema.get("allOf")
    if not isinstance(branches, list):
        return None
    parts = [resolve(b) for b in branches]
    if not any(isinstance(p, dict) and p.get("additionalProperties") is False for p in parts):
        return None
    merged: dict[str, Any] = {"type": "object", "properties": {}, "required": [],
                              "additionalProperties": False}
    for part in parts:
        if not isinstance(part, dict) or set(part) - {"type", "properties", "required",
                                                      "additionalProperties"}:
            return None
        merged["properties"].update(part.get("properties", {}))
        for name in part.get("required", []):
            if name not in merged["required"]:
                merged["required"].append(name)
    for key, value in schema.items():
        if key != "allOf":
            merged[key] = value
    return merged


#: Fields a published schema requires that the same document's own examples of the operation
#: leave out, and that the real API accepts without (it applies the default). Each is listed with
#: the examples that show it.
OPTIONAL_AFTER_ALL: dict[str, dict[str, dict[str, str]]] = {
    "meta": {
        "BaseMessageProperties": {
            "recipient_type": "defaults to individual; omitted by the examples 'Send Contact "
            "Message', 'Send Text Message with Preview URL' and others",
            "type": "defaults to text; omitted by the example 'Send Text Message with Preview "
            "URL'",
        },
    },
}


#: Keywords of a published schema that refuse the same document's own examples of the
#: operation: (schema, path of keys inside it, new value or None to drop, why). Applied after
#: the flattening above; ``tests/unit/test_contracts.py`` checks every example passes.
PATCHES: dict[str, list[tuple[str, tuple[str, ...], Any, str]]] = {
    "meta": [
        ("LocationMessage", ("properties", "location", "properties", "latitude", "type"),
         ["number", "string"],
         "the examples 'Send Location Message' and 'Send Reply to Location Message' send "
         "coordinates as numbers"),
        ("LocationMessage", ("properties", "location", "properties", "longitude", "type"),
         ["number", "string"], "as latitude"),
        ("TemplateComponent", ("properties", "index"), {"type": ["integer", "string"]},
         "the examples 'Send Catalog Template Message' and 'Send Sample Issue Resolution "
         "Template' send an integer index, and the pattern '^[2-6, 11-14]$' is a character "
         "class that refuses the index '0' of 'Send Flow Template Message'"),
        ("TemplateComponent", ("properties", "sub_type", "enum"),
         ["quick_reply", "url", "catalog", "flow", "QUICK_REPLY", "URL", "CATALOG", "FLOW"],
         "the examples use upper case ('CATALOG' in 'Send Catalog Template Message') and "
         "'flow' ('Send Flow Template Message')"),
        ("LanguageObject", ("required",), ["code"],
         "'policy' has a single value and the examples 'Send Message Template Text', 'Send "
         "Test Message' and others leave it out"),
    ],
}


def _patch(schemas: dict[str, Any], name: str, path: tuple[str, ...], value: Any) -> None:
    node = schemas[name]
    for key in path[:-1]:
        node = node[key]
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(value)


def _one_of_to_any_of(node: Any) -> int:
    """Every ``oneOf`` becomes ``anyOf``; returns how many.

    The documents use ``oneOf`` for unions whose branches overlap (OpenAI's ``InputItem``: an
    ``EasyInputMessage`` is also an ``Item``; Meta's template components), and JSON Schema's
    ``oneOf`` refuses an instance valid under two branches, which the real APIs accept. A
    ``discriminator`` beside it still picks the branch (see ``released/fakes/contracts``).
    """
    count = 0
    if isinstance(node, dict):
        if "oneOf" in node and "anyOf" not in node:
            node["anyOf"] = node.pop("oneOf")
            count += 1
        for value in node.values():
            count += _one_of_to_any_of(value)
    elif isinstance(node, list):
        for item in node:
            count += _one_of_to_any_of(item)
    return count


def transform(provider: str, components: dict[str, Any],
              operations: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Apply the transformations to the extracted components; return what was done."""
    done: list[dict[str, Any]] = []
    schemas = components.get("schemas", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            name = node["$ref"].rsplit("/", 1)[1]
            return schemas.get(name, node)
        return node

    flattened = []
    for name in sorted(schemas):
        flat = _flatten_closed_allof(schemas[name], resolve)
        if flat is not None:
            schemas[name] = flat
            flattened.append(name)
    if flattened:
        doc = (_flatten_closed_allof.__doc__ or "").split("\n\n")[1]
        done.append({"schemas": flattened, "change": "allOf with additionalProperties:false "
                     "flattened into one object", "why": " ".join(doc.split())})
    for name, fields in OPTIONAL_AFTER_ALL.get(provider, {}).items():
        for schema in _schemas_derived_from(schemas, name):
            required = schemas[schema].get("required", [])
            for field, why in fields.items():
                if field in required:
                    required.remove(field)
                    done.append({"schemas": [schema], "change": f"'{field}' not required",
                                 "why": why})
    for name, path, value, why in PATCHES.get(provider, []):
        _patch(schemas, name, path, value)
        change = f"{'/'.join(path)} " + ("dropped" if value is None else f"= {json.dumps(value)}")
        done.append({"schemas": [name], "change": change, "why": why})
    count = _one_of_to_any_of(components) + _one_of_to_any_of(operations or {})
    if count:
        doc = (_one_of_to_any_of.__doc__ or "").split("\n\n")[1]
        done.append({"schemas": ["*"], "change": f"oneOf read as anyOf ({count} places)",
                     "why": " ".join(doc.split())})
    return done


def _schemas_derived_from(schemas: dict[str, Any], base: str) -> list[str]:
    out = [base] if base in schemas else []
    ref = f"#/components/schemas/{base}"
    for name, schema in sorted(schemas.items()):
        if name != base and ref in json.dumps(schema.get("allOf", [])):
            out.append(name)
    # Flattened schemas no longer reference the base: they carry its required list.
    for name, schema in sorted(schemas.items()):
        if name not in out and isinstance(schema.get("required"), list):
            props = schema.get("properties", {})
            base_props = schemas.get(base, {}).get("properties", {})
            if base_props and set(base_props) <= set(props) and schema.get(
                "additionalProperties"
            ) is False:
                out.append(name)
    return out


# -- extraction ------------------------------------------------------------------------------


def strip(node: Any, *, in_schema: bool = True) -> Any:
    """A copy of ``node`` without annotations and ``x-`` extensions."""
    if isinstance(node, list):
        return [strip(item, in_schema=in_schema) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-") or (in_schema and key in ANNOTATIONS):
            continue
        if key in NAMED_SCHEMAS and isinstance(value, dict):
            out[key] = {name: strip(sub) for name, sub in value.items()}
        elif key in ("enum", "const"):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = strip(value, in_schema=in_schema)
    return out


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def lookup(doc: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"external reference {ref!r} is not supported")
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def operation_extract(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    item = doc["paths"][path]
    op = item[method]
    parameters = []
    for param in [*item.get("parameters", []), *op.get("parameters", [])]:
        param = lookup(doc, param["$ref"]) if "$ref" in param else param
        if param.get("in") not in ("path", "query"):
            continue  # headers (Authorization, User-Agent) are checked by the fakes themselves
        parameters.append({
            "name": param["name"],
            "in": param["in"],
            "required": bool(param.get("required", False)),
            "schema": strip(param.get("schema", {})),
        })
    out: dict[str, Any] = {"method": method.upper(), "path": path, "parameters": parameters}
    body = op.get("requestBody")
    if body is not None:
        body = lookup(doc, body["$ref"]) if "$ref" in body else body
        content = {}
        for media, spec in sorted(body.get("content", {}).items()):
            entry: dict[str, Any] = {"schema": strip(spec.get("schema", {}))}
            examples = spec.get("examples") or {}
            if examples:
                entry["examples"] = {
                    name: ex["value"] for name, ex in sorted(examples.items()) if "value" in ex
                }
            content[media] = entry
        out["requestBody"] = {"required": bool(body.get("required", False)), "content": content}
    responses = {}
    for status, response in sorted(op.get("responses", {}).items()):
        if not str(status).startswith("2"):
            continue
        response = lookup(doc, response["$ref"]) if "$ref" in response else response
        content = {
            media: strip(spec.get("schema", {}))
            for media, spec in sorted((response.get("content") or {}).items())
            if media == "application/json"
        }
        responses[str(status)] = content
    out["responses"] = responses
    return out


def extract(provider: str, contracts: Path) -> dict[str, Any]:
    source = SOURCES[provider]
    with (contracts / source["file"]).open(encoding="utf-8") as fh:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # a safe loader, C if built
        doc = yaml.load(fh, Loader=loader)  # noqa: S506
    operations = {
        f"{method.upper()} {path}": operation_extract(doc, method, path)
        for method, path in source["operations"]
    }
    components: dict[str, dict[str, Any]] = {}
    extra = [f"#/components/schemas/{name}" for name in source.get("components", [])]
    pending = sorted(set(refs(operations)) | set(extra))
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        _, _, kind, name = ref.split("/", 3)
        node = strip(lookup(doc, ref))
        components.setdefault(kind, {})[name] = node
        pending.extend(r for r in refs(node) if r not in seen)
    components = {kind: dict(sorted(items.items())) for kind, items in sorted(components.items())}
    transforms = transform(provider, components, operations)
    license_text = (contracts / source["license_file"]).read_text(encoding="utf-8")
    return {
        "_source": {
            "document": source["file"],
            "upstream": source["upstream"],
            "upstream_path": source["path"],
            "commit": source["commit"],
            "date": source["date"],
            "title": doc.get("info", {}).get("title"),
            "openapi": doc.get("openapi"),
            "version": doc.get("info", {}).get("version"),
            "license": source["license"],
            "license_text": license_text,
            "generated_by": "hack/extract-contracts.py from ../shared/contracts; do not edit",
        },
        "_transforms": transforms,
        "operations": operations,
        "components": components,
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


def find_contracts(explicit: str | None) -> Path | None:
    for candidate in ([Path(explicit)] if explicit else []) + (
        [Path(os.environ["RELEASED_CONTRACTS"])] if os.environ.get("RELEASED_CONTRACTS") else []
    ) + CANDIDATES:
        if (candidate / SOURCES["meta"]["file"]).exists():
            return candidate
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contracts", help="folder with the OpenAPI documents "
                        "(default: ../shared/contracts, or $RELEASED_CONTRACTS)")
    parser.add_argument("--out", default=str(OUT_DIR), help="where the JSON files go")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a file differs from what would be written")
    args = parser.parse_args(argv)
    contracts = find_contracts(args.contracts)
    if contracts is None:
        print("extract-contracts: ../shared/contracts not found (use --contracts DIR)",
              file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    stale = []
    for provider in SOURCES:
        text = render(extract(provider, contracts))
        target = out_dir / f"{provider}.json"
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                stale.append(str(target))
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target} ({len(text) // 1024} KiB)")
    if stale:
        print("out of date (run python hack/extract-contracts.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
