"""What Meta's and OpenAI's APIs accept, for the fakes to refuse what the real services refuse.

Two sources, both from ``../shared/contracts``:

- the published OpenAPI documents, whose schemas for the endpoints the project uses are
  extracted into ``meta.json`` and ``openai.json`` beside this module by
  ``hack/extract-contracts.py`` (shipped code cannot read ``../shared`` at run time; the files
  name their source, commit, license and every transformation applied). Requests are validated
  against them with ``jsonschema`` (Draft 2020-12, which OpenAPI 3.1 schemas are), following
  OpenAPI ``discriminator`` mappings;
- the README's addenda (what changed after the documents were published), written here as
  explicit rules, each with a comment quoting the README line it implements.

Every ``check_*`` function returns None when the request is acceptable, else a :class:`Problem`
with the reason the real API gives (the fakes wrap it in the provider's error envelope).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, by_relevance
from jsonschema.exceptions import best_match as _best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from released.fakes.webhooks import is_bsuid

HERE = Path(__file__).resolve().parent
PROVIDERS = ("meta", "openai")
MAX_TEXT_BODY = 4096
MAX_CALLBACK_URI = 200
_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)$")

MESSAGES = "POST /{Version}/{Phone-Number-ID}/messages"


@dataclass(frozen=True)
class Problem:
    """Why a request is refused: ``message``, the offending ``param`` (OpenAI's dotted path,
    e.g. ``tools[0].vector_store_ids``) and a machine ``code`` (OpenAI's ``error.code``)."""

    message: str
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return self.message


# -- the extracted documents ----------------------------------------------------------------


@cache
def document(provider: str) -> dict[str, Any]:
    """The extract of ``provider``'s OpenAPI document (``meta`` or ``openai``)."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}")
    data: dict[str, Any] = json.loads((HERE / f"{provider}.json").read_text(encoding="utf-8"))
    return data


@cache
def _registry(provider: str) -> Registry[Any]:
    resource = Resource.from_contents(document(provider), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(f"urn:released:{provider}", resource)
    return registry


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(_escape(p) for p in parts)


@cache
def _validator(provider: str, pointer: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"urn:released:{provider}{pointer}"}
    return jsonschema.Draft202012Validator(schema, registry=_registry(provider))


def operation(provider: str, name: str) -> dict[str, Any]:
    """The extracted operation, e.g. ``operation("openai", "POST /responses")``."""
    result: dict[str, Any] = document(provider)["operations"][name]
    return result


def _resolve(provider: str, schema: Any) -> Any:
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        ref = schema["$ref"]
        node: Any = document(provider)
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def request_pointer(provider: str, name: str, content_type: str = "application/json") -> str:
    """JSON pointer to the request body schema of an operation (after a discriminator)."""
    return _pointer("operations", name, "requestBody", "content", content_type, "schema")


def _discriminated(provider: str, pointer: str, body: Any) -> str:
    """Follow an OpenAPI ``discriminator`` at the top of a schema (jsonschema does not): the
    body's discriminator property picks the one schema to validate against."""
    node: Any = document(provider)
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    schema = _resolve(provider, node)
    discriminator = schema.get("discriminator") if isinstance(schema, dict) else None
    if not isinstance(discriminator, dict) or not isinstance(body, dict):
        return pointer
    value = body.get(discriminator.get("propertyName", ""))
    mapping = discriminator.get("mapping") or {}
    if isinstance(value, str) and value in mapping:
        return str(mapping[value])
    return pointer


def validation_errors(
    provider: str, pointer: str, body: Any, *, discriminate: bool = True
) -> list[ValidationError]:
    """Every way ``body`` breaks the schema at ``pointer`` of the provider's extract."""
    if discriminate:
        pointer = _discriminated(provider, pointer, body)
    return list(_validator(provider, pointer).iter_errors(body))


#: A missing parameter is reported before an unexpected one, as the real APIs do.
_RELEVANCE = by_relevance(strong=frozenset({"required"}))


def best_match(errors: Iterable[ValidationError]) -> ValidationError | None:
    return _best_match(errors, key=_RELEVANCE)


def explain(errors: Iterable[ValidationError]) -> ValidationError | None:
    """The error a person would want to read: jsonschema's best match, then, inside a
    ``oneOf``/``anyOf``, the error of the one branch whose ``type`` (the discriminator) fits."""
    error = best_match(errors)
    while error is not None and error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict[Any, list[ValidationError]] = defaultdict(list)
        for sub in error.context:
            branches[sub.schema_path[0] if sub.schema_path else None].append(sub)
        fitting = [
            subs for subs in branches.values()
            if not any(
                (list(s.relative_path) == ["type"] and s.validator in ("enum", "const"))
                or (not s.relative_path and s.validator in ("type", "enum", "const"))
                for s in subs
            )
        ]
        if len(fitting) != 1:
            break
        error = best_match(fitting[0])
    return error


# -- how each provider words a refusal ------------------------------------------------------


def _openai_param(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _meta_param(path: Iterable[Any]) -> str:
    parts = list(path)
    if not parts:
        return "body"
    out = str(parts[0])
    for part in parts[1:]:
        out += f"[{part}]" if isinstance(part, int) else f"['{part}']"
    return out


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def openai_problem(error: ValidationError) -> Problem:
    """OpenAI's wording of a schema refusal (``invalid_request_error`` + a ``code``)."""
    path = list(error.absolute_path)
    param = _openai_param(path) or None
    if error.validator in ("anyOf", "oneOf") and error.context and all(
        not sub.relative_path and sub.validator == "type" for sub in error.context
    ):
        # A union of plain types (e.g. boolean | null): one "invalid type" for all of them.
        kinds: list[str] = []
        for sub in error.context:
            value = sub.validator_value
            for kind in value if isinstance(value, list) else [value]:
                if kind not in kinds:
                    kinds.append(str(kind))
        return Problem(
            f"Invalid type for '{param}': expected {' or '.join(kinds)}, but got "
            f"{_type_name(error.instance)} instead.", param, "invalid_type")
    if error.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        name = _openai_param([*path, missing.group(1)]) if missing else param
        return Problem(f"Missing required parameter: '{name}'.", name,
                       "missing_required_parameter")
    if error.validator == "additionalProperties":
        extra = re.search(r"\('([^']+)' was", error.message)
        name = _openai_param([*path, extra.group(1)]) if extra else param
        return Problem(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return Problem(
            f"Invalid type for '{param}': expected {expected}, but got "
            f"{_type_name(error.instance)} instead.", param, "invalid_type")
    if error.validator in ("enum", "const"):
        allowed = error.validator_value if error.validator == "enum" else [error.validator_value]
        return Problem(
            f"Invalid value: '{error.instance}'. Supported values are: "
            + ", ".join(f"'{a}'" for a in allowed if a is not None) + ".",
            param, "invalid_value")
    if error.validator in ("minimum", "exclusiveMinimum"):
        return Problem(
            f"Invalid '{param}': integer below minimum value. Expected a value >= "
            f"{error.validator_value}, but got {error.instance} instead.",
            param, "integer_below_min_value")
    if error.validator in ("maximum", "exclusiveMaximum"):
        return Problem(
            f"Invalid '{param}': integer above maximum value. Expected a value <= "
            f"{error.validator_value}, but got {error.instance} instead.",
            param, "integer_above_max_value")
    if error.validator in ("maxLength", "maxItems"):
        what, code = (("string too long", "string_above_max_length")
                      if error.validator == "maxLength"
                      else ("array too long", "array_above_max_length"))
        return Problem(f"Invalid '{param}': {what}. Expected a maximum length of "
                       f"{error.validator_value}.", param, code)
    if error.validator in ("minLength", "minItems"):
        what, code = (("string too short", "string_below_min_length")
                      if error.validator == "minLength" else ("empty array", "empty_array"))
        return Problem(f"Invalid '{param}': {what}. Expected a minimum length of "
                       f"{error.validator_value}.", param, code)
    return Problem(f"Invalid '{param or 'body'}': {error.message}", param, "invalid_value")


def meta_problem(error: ValidationError) -> Problem:
    """Meta's wording of a schema refusal (code 100, in ``error_data.details``)."""
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        name = _meta_param([*path, missing.group(1)]) if missing else _meta_param(path)
        return Problem(f"The parameter {name} is required.", name)
    if error.validator == "additionalProperties":
        extra = re.search(r"\('([^']+)' was", error.message)
        key = extra.group(1) if extra else "?"
        return Problem(f'Unexpected key "{key}" on param "{_meta_param(path)}".',
                       _meta_param([*path, key]))
    param = _meta_param(path)
    if error.validator == "type":
        return Problem(f"Param {param} must be a {error.validator_value}.", param)
    if error.validator == "enum":
        allowed = ", ".join(str(a) for a in error.validator_value)
        return Problem(f"Param {param} must be one of {{{allowed}}}.", param)
    if error.validator in ("maxLength", "maxItems"):
        return Problem(f"Param {param} must be at most {error.validator_value} long.", param)
    return Problem(f"Param {param} is invalid: {error.message}", param)


def check_request(
    provider: str, name: str, body: Any, content_type: str = "application/json"
) -> Problem | None:
    """Validate a request body against the operation's published schema."""
    op = operation(provider, name)
    request = op.get("requestBody")
    if request is None:
        return None
    if body is None or body == {}:
        if request.get("required") and body is None:
            return Problem("A request body is required.", None, "missing_required_parameter")
        if body is None:
            return None
    if content_type not in request["content"]:
        content_type = next(iter(request["content"]))
    errors = validation_errors(provider, request_pointer(provider, name, content_type), body)
    error = explain(errors)
    if error is None:
        return None
    return meta_problem(error) if provider == "meta" else openai_problem(error)


def check_response(provider: str, name: str, body: Any, status: str = "200") -> str | None:
    """Whether an answer has the published shape (the fakes' tests check their own answers)."""
    schemas = operation(provider, name)["responses"].get(status) or {}
    schema = schemas.get("application/json")
    if schema is None:
        return None
    pointer = _pointer("operations", name, "responses", status, "application/json")
    error = explain(validation_errors(provider, pointer, body, discriminate=False))
    return None if error is None else f"{list(error.absolute_path)}: {error.message}"


def check_parameters(provider: str, name: str, values: Mapping[str, Any]) -> Problem | None:
    """Path and query parameters (``values`` by name, strings as received; integers are
    converted first, as the server does)."""
    for index, param in enumerate(operation(provider, name)["parameters"]):
        value = values.get(param["name"])
        if value is None:
            if param["required"]:
                return Problem(f"Missing required parameter: '{param['name']}'.",
                               param["name"], "missing_required_parameter")
            continue
        schema = _resolve(provider, param["schema"])
        kind = schema.get("type") if isinstance(schema, dict) else None
        if kind == "array":
            continue  # repeated query parameters: not used by the project's clients
        if kind == "integer":
            try:
                value = int(value)
            except ValueError:
                return Problem(
                    f"Invalid type for '{param['name']}': expected an integer, but got a "
                    "string instead.", param["name"], "invalid_type")
        pointer = _pointer("operations", name, "parameters", str(index), "schema")
        error = explain(validation_errors(provider, pointer, value, discriminate=False))
        if error is not None:
            problem = openai_problem(error)
            message = problem.message.replace("'None'", f"'{param['name']}'").replace(
                "'body'", f"'{param['name']}'")
            return Problem(message, param["name"], problem.code)
    return None


def top_level_properties(provider: str, name: str) -> frozenset[str]:
    """Every property the request schema of an operation names at its top level (through
    ``allOf``/``anyOf`` and references)."""
    op = operation(provider, name)
    content = op["requestBody"]["content"]
    schema = next(iter(content.values()))["schema"]
    names: set[str] = set()

    def walk(node: Any, depth: int = 0) -> None:
        node = _resolve(provider, node)
        if not isinstance(node, dict) or depth > 8:
            return
        names.update(node.get("properties", {}))
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key, []):
                walk(sub, depth + 1)

    walk(schema)
    return frozenset(names)


# -- Meta: the addenda -----------------------------------------------------------------------


def _version(version: str) -> tuple[int, int]:
    match = _VERSION_RE.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_meta_message(body: dict[str, Any], version: str) -> Problem | None:
    """``POST /{Version}/{Phone-Number-ID}/messages``: a send or a mark-as-read."""
    if body.get("messaging_product") != "whatsapp":
        # Meta's messages reference: messaging_product is required and always "whatsapp".
        return Problem("The parameter messaging_product is required and must be 'whatsapp'.",
                       "messaging_product")
    if body.get("status") is not None:
        return _check_mark_read(body)
    problem = _check_addressing(body, version)
    if problem is not None:
        return problem
    # README "BSUIDs": a send by `recipient` has no `to`; the document (which predates BSUIDs)
    # knows only `to`, so the rest of the request is checked with the recipient in its place.
    view = dict(body)
    recipient = view.pop("recipient", None)
    if not view.get("to") and recipient is not None:
        view["to"] = recipient
    # Meta applies type "text" when none is given; it also picks the schema (discriminator).
    view.setdefault("type", "text")
    kinds = _meta_message_types()
    if view["type"] not in kinds:
        return Problem(f"Param type must be one of {{{', '.join(kinds)}}}.", "type")
    problem = check_request("meta", MESSAGES, view)
    if problem is not None:
        return problem
    text = body.get("text")
    if body.get("type", "text") == "text" and isinstance(text, dict):
        # Meta's messages reference: text.body is required, at most 4096 characters.
        if not isinstance(text.get("body"), str) or not text["body"]:
            return Problem("The parameter text['body'] is required.", "text['body']")
        if len(text["body"]) > MAX_TEXT_BODY:
            return Problem(
                f"Param text['body'] must be at most {MAX_TEXT_BODY} characters long.",
                "text['body']")
    return None


@cache
def _meta_message_types() -> tuple[str, ...]:
    """The message types of the document's ``Message`` discriminator."""
    schema = _resolve("meta", {"$ref": "#/components/schemas/Message"})
    return tuple(schema["discriminator"]["mapping"])


def _check_mark_read(body: dict[str, Any]) -> Problem | None:
    # README "Mark as read with a typing indicator": {"messaging_product":"whatsapp",
    # "status":"read","message_id":…,"typing_indicator":{"type":"text"}}. Meta's document has
    # this only as an example ("Send typing indicator and read receipt"), not as a schema.
    if body.get("status") != "read":
        return Problem("Param status must be one of {read}.", "status")
    if not isinstance(body.get("message_id"), str) or not body["message_id"]:
        return Problem("The parameter message_id is required.", "message_id")
    unexpected = set(body) - {"messaging_product", "status", "message_id", "typing_indicator"}
    if unexpected:
        key = sorted(unexpected)[0]
        return Problem(f'Unexpected key "{key}" on param "body".', key)
    indicator = body.get("typing_indicator")
    if indicator is not None and indicator != {"type": "text"}:
        return Problem("Param typing_indicator['type'] must be one of {text}.",
                       "typing_indicator")
    return None


def _check_addressing(body: dict[str, Any], version: str) -> Problem | None:
    to = body.get("to")
    recipient = body.get("recipient")
    if isinstance(to, str) and is_bsuid(to):
        # README "BSUIDs": "Sending to a BSUID: put it in `recipient` and leave `to` out (`to`
        # is for phone numbers and wins when both are given)."
        return Problem(
            "Param to must be a phone number or a group id; to send to a business-scoped user "
            "ID, put it in recipient and leave to out.", "to")
    if to:
        return None
    if recipient is not None and _version(version) < (25, 0):
        # README: "Sending by `recipient` works on current Graph versions (v25.0 and later);
        # older versions may ignore it." Ignored, the request names no recipient at all.
        return Problem("The parameter to is required.", "to")
    if recipient is None:
        return Problem("The parameter to is required.", "to")
    if not is_bsuid(recipient):
        # README: "A BSUID can be a two-letter prefix, a dot and up to 128 characters".
        return Problem(
            "Param recipient must be a business-scoped user ID (e.g. US.13491208655302741918).",
            "recipient")
    return None


def check_callback_uri(uri: str, verify_token: Any) -> Problem | None:
    """A webhook override (phone number or WABA) that is being set (not removed)."""
    if len(uri) > MAX_CALLBACK_URI or not re.match(r"^https?://", uri):
        # Meta's webhook overrides guide: an http(s) URL of at most 200 characters.
        return Problem(
            f"override_callback_uri must be an http(s) URL of at most {MAX_CALLBACK_URI} "
            "characters.", "override_callback_uri")
    if not isinstance(verify_token, str) or not verify_token:
        # Meta verifies a new callback with the verify token, so one must be given.
        return Problem("The parameter verify_token is required.", "verify_token")
    return None
