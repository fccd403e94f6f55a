"""A fake of the OpenAI API for tests and local demos; works with the real ``openai`` SDK.

Base URL: ``http://127.0.0.1:PORT/v1`` (``openai.OpenAI(base_url=fake.url, api_key=...)``).

It refuses what the real API refuses: every request on the endpoints the project uses is
checked against OpenAI's published OpenAPI document (the schemas extracted into
``released/fakes/contracts/openai.json``) and the changes since (``../shared/contracts/README.md``:
model shutdowns, Responses + Conversations, ``max_output_tokens`` counting reasoning), and a
refused request gets OpenAI's error envelope ``{"error": {message, type, param, code}}`` and
HTTP status. It models what the API does over time, on a clock tests can move: models shut down
on their dates, vector-store files take time to index, reasoning tokens eat into
``max_output_tokens``. See ``README.md`` here.

API routes (Bearer key required):

- ``POST /v1/responses`` (``GET|DELETE /v1/responses/{id}``): answers deterministically. FAQ
  pairs come from ``instructions``, system/developer messages in ``input`` (lines ``Q: ...`` /
  ``A: ...``) and, with a ``file_search`` tool, from the indexed files of its vector stores
  (JSON ``[{"q","a"}]`` / ``{"faqs": [...]}`` / ``question``+``answer`` keys, or ``Q:``/``A:``
  text). The FAQ whose question shares the most words with the last user message is answered
  with its answer text exactly; with no overlap the answer is ``"I don't know."``.
- ``POST /v1/conversations``, ``GET|DELETE /v1/conversations/{id}``,
  ``GET|POST /v1/conversations/{id}/items``.
- ``POST /v1/chat/completions``: the same logic on ``messages``.
- ``POST /v1/files`` (multipart), ``GET /v1/files``, ``GET|DELETE /v1/files/{id}``,
  ``GET /v1/files/{id}/content``.
- ``POST|GET /v1/vector_stores``, ``GET|POST|DELETE /v1/vector_stores/{id}``,
  ``POST|GET /v1/vector_stores/{id}/files``, ``GET|DELETE /v1/vector_stores/{id}/files/{fid}``,
  ``POST /v1/vector_stores/{id}/file_batches``, ``GET .../file_batches/{bid}`` (+ ``/files``,
  ``/cancel``), ``POST /v1/vector_stores/{id}/search``.
- ``GET /v1/models``, ``GET /v1/models/{id}`` (404 for unknown and shut-down models).

Control routes (no auth), JSON, under ``/_fake/``: ``calls``, ``requests``, ``errors``,
``latency``, ``reset``, ``config``, ``state``, ``replies``, ``clock``, ``models``.

Run alone: ``python -m released.fakes.openai --port 8082 [--api-key K | --any-key]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from released.fakes import contracts
from released.fakes._base import (
    BaseState,
    FakeServer,
    clock_route,
    loggable_headers,
    random_id,
    serve_cli,
    sleep_unless_stopping,
)

DEFAULT_API_KEY = "sk-test-fake-openai-key"
UNKNOWN_ANSWER = "I don't know."
FILE_PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}
#: Seconds (of the fake's clock) a vector-store file stays ``in_progress`` before it is indexed.
DEFAULT_INDEXING_SECONDS = 0.2

#: OpenAI's ``reasoning.effort`` values, weakest first (the document's ``ReasoningEffort``).
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
#: Reasoning tokens a response spends per effort (they count against ``max_output_tokens``).
REASONING_TOKENS = {"none": 0, "minimal": 16, "low": 64, "medium": 192, "high": 512,
                    "xhigh": 1024, "max": 2048}


@dataclass(frozen=True)
class ModelInfo:
    """A model as the fake knows it: when it shuts down and which reasoning efforts it takes
    (``efforts=()``: not a reasoning model; ``reasoning.effort`` is refused)."""

    id: str
    created: int
    shutdown_date: str | None = None
    efforts: tuple[str, ...] = ()
    default_effort: str | None = None
    verbosities: tuple[str, ...] = ("medium",)

    def shut_down(self, at: float) -> bool:
        if self.shutdown_date is None:
            return False
        day = datetime.fromisoformat(self.shutdown_date).replace(tzinfo=UTC).timestamp()
        return at >= day


_GPT5_EFFORTS = ("minimal", "low", "medium", "high")
_ALL_VERBOSITY = ("low", "medium", "high")

#: README "OpenAI": "Shutdowns: gpt-5, gpt-5-mini, gpt-5-nano on 2026-12-11; gpt-4o, gpt-4o-mini,
#: gpt-4.1, gpt-4.1-mini on 2027-01-14 (OpenAI names gpt-6-luna as the replacement: ...,
#: reasoning effort `none` … `max`, default `medium`); gpt-5.4-nano on 2027-04-01."
MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("gpt-4o", 1715367049, "2027-01-14"),
    ModelInfo("gpt-4o-mini", 1721172741, "2027-01-14"),
    ModelInfo("gpt-4.1", 1744316542, "2027-01-14"),
    ModelInfo("gpt-4.1-mini", 1744318173, "2027-01-14"),
    ModelInfo("gpt-5", 1754425777, "2026-12-11", _GPT5_EFFORTS, "medium", _ALL_VERBOSITY),
    ModelInfo("gpt-5-mini", 1754425928, "2026-12-11", _GPT5_EFFORTS, "medium", _ALL_VERBOSITY),
    ModelInfo("gpt-5-nano", 1754426384, "2026-12-11", _GPT5_EFFORTS, "medium", _ALL_VERBOSITY),
    ModelInfo("gpt-5.4-nano", 1772000000, "2027-04-01",
              ("none", "low", "medium", "high", "xhigh"), "none", _ALL_VERBOSITY),
    ModelInfo("gpt-6-luna", 1785000000, None, EFFORTS, "medium", _ALL_VERBOSITY),
)

# Presets for script_errors(): name -> (status, type, code, message).
ERROR_PRESETS: dict[str, tuple[int, str, str | None, str]] = {
    "rate_limit": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in {retry_after}s.",
    ),
    "quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "server_error": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "bad_gateway": (502, "server_error", None, "Bad gateway."),
    "unavailable": (
        503,
        "server_error",
        None,
        "The engine is currently overloaded, please try again later.",
    ),
    "auth": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "bad_request": (400, "invalid_request_error", None, "Invalid request."),
    "not_found": (404, "invalid_request_error", None, "Not found."),
    # "timeout" has no answer of its own: the call sleeps (``delay``, default 30 s) and then
    # answers normally, long after the client gave up.
}

_STOPWORDS_TEXT = """
    a an the is are was were be been am do does did to of in on at for with by from and or
    but if then so as it its this that these those i me my we our you your he she they them
    what which who whom how when where why can could would should will shall may might must
    there here have has had not no yes please any some about into than too very just also
    el la los las un una unos unas de del al y o que en es son por para con se su sus lo le
    les mi mis tu tus como cual cuando donde qué cómo cuál cuándo dónde hay"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

Handler = Callable[[Request], Awaitable[Response]]


# -- FAQ extraction and matching -------------------------------------------------------------

_Q_RE = re.compile(
    r"^\s*(?:[-*•]\s*)?(?:Q|Question|P|Pregunta)\s*\d*\s*[:\uff1a]\s*(.+?)\s*$", re.I
)
_A_RE = re.compile(r"^\s*(?:[-*•]\s*)?(?:A|Answer|R|Respuesta)\s*\d*\s*[:\uff1a]\s*(.+?)\s*$", re.I)


def parse_faq_text(text: str) -> list[tuple[str, str]]:
    """``Q: ...`` / ``A: ...`` line pairs in ``text``."""
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for line in text.splitlines():
        q = _Q_RE.match(line)
        if q:
            question = q.group(1)
            continue
        a = _A_RE.match(line)
        if a and question is not None:
            pairs.append((question, a.group(1)))
            question = None
    return pairs


def _faq_from_obj(obj: Any) -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        for key in ("faqs", "faq", "items", "data"):
            if isinstance(obj.get(key), list):
                return _faq_from_obj(obj[key])
        q = obj.get("q", obj.get("question"))
        a = obj.get("a", obj.get("answer"))
        if isinstance(q, str) and isinstance(a, str):
            return [(q, a)]
        return []
    if isinstance(obj, list):
        pairs: list[tuple[str, str]] = []
        for item in obj:
            pairs.extend(_faq_from_obj(item))
        return pairs
    return []


def parse_faq_file(data: bytes) -> list[tuple[str, str]]:
    """FAQ pairs from a file: JSON, JSON lines, YAML-ish ``q:``/``a:`` or ``Q:``/``A:`` text."""
    text = data.decode("utf-8", errors="replace")
    try:
        pairs = _faq_from_obj(json.loads(text))
        if pairs:
            return pairs
    except ValueError:
        pass
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                pairs.extend(_faq_from_obj(json.loads(line)))
            except ValueError:
                continue
    return pairs or parse_faq_text(text)


def tokens(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    out: set[str] = set()
    for word in words:
        if word in STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s"):
            word = word[:-1]
        out.add(word)
    return out


def best_faq(question: str, faqs: Sequence[tuple[str, str]]) -> int | None:
    """Index of the FAQ whose question best matches ``question`` (None: no shared word)."""
    wanted = tokens(question)
    best: tuple[int, float, int] | None = None
    best_index: int | None = None
    for index, (q, _a) in enumerate(faqs):
        have = tokens(q)
        overlap = len(wanted & have)
        if not overlap:
            continue
        # Ties on content words (e.g. the same question in two languages) go to the FAQ that
        # also shares the small words.
        every_word = len(set(re.findall(r"\w+", question.lower()))
                         & set(re.findall(r"\w+", q.lower())))
        score = (overlap, overlap / math.sqrt(len(have) * max(len(wanted), 1)), every_word)
        if best is None or score > best:
            best, best_index = score, index
    return best_index


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""


def split_input(input_value: Any) -> tuple[list[str], str]:
    """(system/developer texts, last user text) from a Responses ``input`` or chat messages."""
    if isinstance(input_value, str):
        return [], input_value
    system: list[str] = []
    last_user = ""
    if isinstance(input_value, list):
        for item in input_value:
            if not isinstance(item, dict):
                continue
            if item.get("type", "message") != "message":
                continue
            role = item.get("role")
            text = _content_text(item.get("content"))
            if role in ("system", "developer"):
                system.append(text)
            elif role == "user":
                last_user = text
    return system, last_user


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


# -- state ------------------------------------------------------------------------------------


class OpenAIState(BaseState):
    """Models, files, vector stores, responses, conversations and recordings; guarded by
    ``lock``."""

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        latency: float = 0.0,
        indexing_seconds: float = DEFAULT_INDEXING_SECONDS,
    ) -> None:
        super().__init__(latency)
        self.api_key = api_key
        self.default_answer = UNKNOWN_ANSWER
        self.indexing_seconds = indexing_seconds
        self.reasoning_tokens: dict[str, int] = dict(REASONING_TOKENS)
        self.models: dict[str, ModelInfo] = {m.id: m for m in MODELS}
        self.files: dict[str, dict[str, Any]] = {}
        self.file_data: dict[str, bytes] = {}
        self.vector_stores: dict[str, dict[str, Any]] = {}
        self.vs_files: dict[str, dict[str, dict[str, Any]]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.responses: dict[str, dict[str, Any]] = {}
        self.response_inputs: dict[str, list[dict[str, Any]]] = {}
        self.conversations: dict[str, dict[str, Any]] = {}
        self.conversation_items: dict[str, list[dict[str, Any]]] = {}
        #: Scripted next answers: a text, or ``{"function_call": {"name", "arguments"}}``.
        self.replies: list[str | dict[str, Any]] = []
        self.requests_per_minute: int | None = None

    def reset(self) -> None:
        with self.lock:
            self.reset_recordings()
            self.models = {m.id: m for m in MODELS}
            self.files.clear()
            self.file_data.clear()
            self.vector_stores.clear()
            self.vs_files.clear()
            self.batches.clear()
            self.responses.clear()
            self.response_inputs.clear()
            self.conversations.clear()
            self.conversation_items.clear()
            self.replies.clear()
            self.clock.real()

    def config(self) -> dict[str, Any]:
        with self.lock:
            return {
                "api_key": self.api_key,
                "latency": self.latency,
                "default_answer": self.default_answer,
                "indexing_seconds": self.indexing_seconds,
                "reasoning_tokens": dict(self.reasoning_tokens),
                "requests_per_minute": self.requests_per_minute,
            }

    def now(self) -> int:
        return int(self.clock.now())

    def model(self, model_id: str) -> ModelInfo | None:
        """The model if it exists at the fake's current time (None: unknown or shut down)."""
        with self.lock:
            info = self.models.get(model_id)
        if info is None or info.shut_down(self.clock.now()):
            return None
        return info

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "files": [dict(f) for f in self.files.values()],
                "vector_stores": [
                    {**self.vs_object(vs_id), "file_ids": list(self.vs_files.get(vs_id, {}))}
                    for vs_id in self.vector_stores
                ],
                "responses": len(self.responses),
                "conversations": len(self.conversations),
            }

    # -- vector-store files index over time (call with the lock held) -------------------------

    def vs_file(self, vs_id: str, file_id: str) -> dict[str, Any]:
        """The vector-store file as it is now: ``in_progress`` until its indexing time has
        passed, then ``completed`` (or ``failed`` for a file with nothing to index)."""
        record = self.vs_files[vs_id][file_id]
        if record["status"] == "in_progress" and self.clock.now() >= record["_ready_at"]:
            data = self.file_data.get(file_id, b"")
            if data.strip():
                record["status"] = "completed"
            else:
                record["status"] = "failed"
                record["last_error"] = {"code": "invalid_file",
                                        "message": "The file is empty and could not be parsed."}
        return {k: v for k, v in record.items() if not k.startswith("_")}

    def vs_object(self, vs_id: str) -> dict[str, Any]:
        vs = self.vector_stores[vs_id]
        files = [self.vs_file(vs_id, f) for f in self.vs_files.get(vs_id, {})]
        counts = {s: sum(1 for f in files if f["status"] == s)
                  for s in ("in_progress", "completed", "failed", "cancelled")}
        vs["file_counts"] = {**counts, "total": len(files)}
        vs["status"] = "in_progress" if counts["in_progress"] else "completed"
        vs["usage_bytes"] = sum(f["usage_bytes"] for f in files if f["status"] == "completed")
        if vs.get("expires_at") is not None and self.clock.now() >= vs["expires_at"]:
            vs["status"] = "expired"
        return dict(vs)

    def faqs_for_stores(self, store_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(question, answer, file_id) of every FAQ in the indexed files of these stores."""
        out: list[tuple[str, str, str]] = []
        with self.lock:
            for vs_id in store_ids:
                for file_id in self.vs_files.get(vs_id, {}):
                    if self.vs_file(vs_id, file_id)["status"] != "completed":
                        continue
                    for q, a in parse_faq_file(self.file_data.get(file_id, b"")):
                        out.append((q, a, file_id))
        return out


# -- helpers ----------------------------------------------------------------------------------


def openai_error(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def problem_error(problem: contracts.Problem, status: int = 400) -> JSONResponse:
    return openai_error(status, problem.message, param=problem.param, code=problem.code)


def not_found(kind: str, object_id: str, param: str | None = None) -> JSONResponse:
    return openai_error(404, f"No {kind} found with id '{object_id}'.", param=param)


def model_not_found(model: str) -> JSONResponse:
    return openai_error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """A cursor page (``limit``, ``after``, ``before``, ``order``) like the list endpoints."""
    order = request.query_params.get("order", "desc")
    items = sorted(items, key=lambda i: i.get("created_at", 0), reverse=(order == "desc"))
    after = request.query_params.get("after")
    before = request.query_params.get("before")
    ids = [i["id"] for i in items]
    if after and after in ids:
        items = items[ids.index(after) + 1 :]
    elif before and before in ids:
        items = items[: ids.index(before)]
    limit = int(request.query_params.get("limit", "20"))
    has_more = len(items) > limit
    items = items[:limit]
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """(fields, files) of a multipart/form-data body; files map name -> (filename, bytes)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    files: dict[str, Any] = {}
    if not message.is_multipart():
        raise ValueError("expected a multipart/form-data body")
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = (str(filename), data)
        else:
            fields[str(name)] = data.decode("utf-8", errors="replace")
    return fields, files


def _contract_name(endpoint: str) -> str:
    """``"GET /v1/vector_stores/{vs_id}"`` -> the document's ``"GET /vector_stores/{...}"``."""
    method, path = endpoint.split(" ", 1)
    path = path.removeprefix("/v1").replace("{vs_id}", "{vector_store_id}")
    return f"{method} {path}"


def _input_items(value: Any) -> list[dict[str, Any]]:
    """A Responses ``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return [dict(item) for item in value if isinstance(item, dict)]
    return []


#: README "OpenAI": "reusable prompts (`v1/prompts`) [were shut down] on 2026-11-30".
PROMPTS_SHUTDOWN = datetime(2026, 11, 30, tzinfo=UTC).timestamp()


def check_responses_addenda(body: dict[str, Any], at: float) -> contracts.Problem | None:
    """The README's rules for ``POST /v1/responses`` that the document does not state."""
    if body.get("prompt") is not None and at >= PROMPTS_SHUTDOWN:
        return contracts.Problem(
            "Unsupported parameter: 'prompt'. Reusable prompts were shut down on 2026-11-30; "
            "send the instructions with the request.", "prompt", "unsupported_parameter")
    if not body.get("model"):
        # README: "reusable prompts (v1/prompts) [were shut down] on 2026-11-30": a response
        # can no longer take its model from a prompt, so the request must name one.
        return contracts.Problem("Missing required parameter: 'model'.", "model",
                                 "missing_required_parameter")
    if body.get("conversation") is not None and body.get("previous_response_id") is not None:
        # README: "`previous_response_id` cannot be combined with `conversation`".
        return contracts.Problem(
            "Mutually exclusive parameters: Ensure you are only providing one of: "
            "'previous_response_id' or 'conversation'.",
            "conversation", "mutually_exclusive_parameters")
    for index, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict) and tool.get("type") == "function":
            problem = check_function_tool(tool, index)
            if problem is not None:
                return problem
        if (isinstance(tool, dict) and tool.get("type") == "file_search"
                and not tool.get("vector_store_ids")):
            # README: "A `file_search` tool needs `vector_store_ids`" (an empty list too).
            return contracts.Problem(
                    f"Invalid 'tools[{index}].vector_store_ids': empty array. Expected an "
                    "array with minimum length 1, but got an empty array instead.",
                    f"tools[{index}].vector_store_ids", "empty_array")
    return None


#: Function names the API takes (OpenAI's function calling guide).
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def check_function_tool(tool: dict[str, Any], index: int) -> contracts.Problem | None:
    """What the API refuses in a function tool beyond the schema: a name outside
    ``[a-zA-Z0-9_-]{1,64}``, and with ``strict: true`` a parameters schema whose objects do not
    set ``additionalProperties: false`` or leave a property out of ``required`` (OpenAI's
    function calling guide, "Strict mode")."""
    name = str(tool.get("name", ""))
    if not _FUNCTION_NAME.match(name):
        return contracts.Problem(
            f"Invalid 'tools[{index}].name': string does not match pattern. Expected a string "
            "that matches the pattern '^[a-zA-Z0-9_-]+$'.", f"tools[{index}].name",
            "invalid_value")
    if not tool.get("strict"):
        return None

    def walk(schema: Any, where: str) -> str | None:
        if not isinstance(schema, dict):
            return None
        if schema.get("type") == "object":
            if schema.get("additionalProperties") is not False:
                return (f"In context={where}, 'additionalProperties' is required to be supplied "
                        "and to be false.")
            props = schema.get("properties") or {}
            missing = [key for key in props if key not in (schema.get("required") or [])]
            if missing:
                return (f"In context={where}, 'required' is required to be supplied and to be "
                        f"an array including every key in properties. Missing '{missing[0]}'.")
            for key, sub in props.items():
                found = walk(sub, f"{where[:-1]}'properties', '{key}')" if where != "()"
                             else f"('properties', '{key}')")
                if found:
                    return found
        if schema.get("type") == "array":
            return walk(schema.get("items"), where)
        return None

    problem = walk(tool.get("parameters"), "()")
    if problem is None:
        return None
    return contracts.Problem(
        f"Invalid schema for function '{name}': {problem}", f"tools[{index}].parameters",
        "invalid_function_parameters")


def check_model_options(body: dict[str, Any], info: ModelInfo) -> contracts.Problem | None:
    """Reasoning effort and verbosity the model takes (gpt-6-luna: ``none`` … ``max``)."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if effort is not None:
        if not info.efforts:
            return contracts.Problem(
                "Unsupported parameter: 'reasoning.effort' is not supported with this model.",
                "reasoning.effort", "unsupported_parameter")
        if effort not in info.efforts:
            allowed = ", ".join(f"'{e}'" for e in info.efforts)
            return contracts.Problem(
                f"Unsupported value: 'reasoning.effort' does not support '{effort}' with this "
                f"model. Supported values are: {allowed}.",
                "reasoning.effort", "unsupported_value")
    text = body.get("text")
    verbosity = text.get("verbosity") if isinstance(text, dict) else None
    if verbosity is not None and verbosity not in info.verbosities:
        allowed = ", ".join(f"'{v}'" for v in info.verbosities)
        return contracts.Problem(
            f"Unsupported value: 'text.verbosity' does not support '{verbosity}' with this "
            f"model. Supported values are: {allowed}.",
            "text.verbosity", "unsupported_value")
    return None


def create_app(state: OpenAIState, fake: FakeOpenAI | None = None) -> Starlette:
    """The Starlette app of the OpenAI fake, serving ``state``."""

    async def _sleep(seconds: float) -> None:
        if fake is not None:
            await sleep_unless_stopping(seconds, fake.stopping)
        else:
            await asyncio.sleep(seconds)

    def api(endpoint: str, handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            raw = await request.body()
            body: Any = None
            if raw and "multipart" not in request.headers.get("content-type", ""):
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
            entry: dict[str, Any] = {
                "method": request.method,
                "path": request.url.path,
                "endpoint": endpoint,
                "query": dict(request.query_params),
                "headers": loggable_headers(request.headers),
                "body": body,
                "at": state.clock.now(),
            }
            state.count(endpoint, entry)
            response = await guarded(request, endpoint, handler)
            response.headers["x-request-id"] = random_id("req_", 16)
            entry["status"] = response.status_code
            if response.status_code >= 400:
                entry["error"] = json.loads(bytes(response.body)).get("error")
            return response

        return wrapped

    async def guarded(request: Request, endpoint: str, handler: Handler) -> Response:
        with state.lock:
            latency = state.latency
            expected = state.api_key
        if latency > 0:
            await _sleep(latency)
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key:
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        if expected is not None and not hmac.compare_digest(key, expected):
            shown = key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)
            return openai_error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        with state.lock:
            rpm = state.requests_per_minute
        wait = state.over_rate(rpm, 60.0)
        if wait is not None:
            # OpenAI's per-minute request limit: 429 with Retry-After until a slot frees up.
            return error_from_spec({"kind": "rate_limit", "retry_after": math.ceil(wait),
                                    "headers": {"x-ratelimit-limit-requests": str(rpm)}},
                                   request)
        spec = state.take_error(endpoint)
        if spec is not None:
            kind = str(spec.get("kind", "server_error"))
            if kind == "timeout":
                await _sleep(float(spec.get("delay", 30.0)))
            else:
                if spec.get("delay"):
                    await _sleep(float(spec["delay"]))
                return error_from_spec(spec, request)
        problem = await check_contract(request, endpoint)
        if problem is not None:
            return problem
        try:
            return await handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            return openai_error(400, f"Invalid request: {exc}")

    async def check_contract(request: Request, endpoint: str) -> Response | None:
        """The published schema of the operation: path and query parameters, then the body."""
        name = _contract_name(endpoint)
        try:
            contracts.operation("openai", name)
        except KeyError:
            return None  # an endpoint the project does not use (chat completions, batches)
        values: dict[str, Any] = dict(request.query_params)
        for key, value in request.path_params.items():
            values["vector_store_id" if key == "vs_id" else key] = value
        problem = contracts.check_parameters("openai", name, values)
        if problem is not None:
            return problem_error(problem)
        op = contracts.operation("openai", name)
        if "requestBody" not in op:
            return None
        content_type = request.headers.get("content-type", "")
        raw = await request.body()
        if "multipart/form-data" in op["requestBody"]["content"]:
            if "multipart/form-data" not in content_type:
                return openai_error(400, "The request must be multipart/form-data.")
            fields, files = parse_multipart(content_type, raw)
            form: dict[str, Any] = dict(fields)
            form.update({name: "<binary>" for name in files})
            problem = contracts.check_request("openai", name, form, "multipart/form-data")
            return None if problem is None else problem_error(problem)
        if not raw:
            body: Any = None
        else:
            try:
                body = json.loads(raw)
            except ValueError:
                return openai_error(
                    400,
                    "We could not parse the JSON body of your request. (HINT: This likely means "
                    "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                    "payload, but what was sent was not valid JSON.)",
                )
        if isinstance(body, dict):
            # OpenAI refuses parameters it does not know (the names come from the schema).
            known = contracts.top_level_properties("openai", name)
            unknown = sorted(set(body) - known)
            if known and unknown:
                return openai_error(400, f"Unknown parameter: '{unknown[0]}'.",
                                    param=unknown[0], code="unknown_parameter")
        problem = contracts.check_request("openai", name, body)
        return None if problem is None else problem_error(problem)

    def error_from_spec(spec: dict[str, Any], request: Request) -> JSONResponse:
        kind = str(spec.get("kind", "server_error"))
        status, etype, code, message = ERROR_PRESETS.get(kind, ERROR_PRESETS["server_error"])
        retry_after = spec.get("retry_after", 1 if kind == "rate_limit" else None)
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        if retry_after is not None:
            headers.setdefault("retry-after", str(retry_after))
        if kind == "rate_limit":
            headers.setdefault("x-ratelimit-limit-requests", "3")
            headers.setdefault("x-ratelimit-remaining-requests", "0")
            headers.setdefault("x-ratelimit-reset-requests", f"{retry_after}s")
        message = str(spec.get("message", message)).format(
            model="gpt-6-luna", retry_after=retry_after
        )
        return openai_error(
            int(spec.get("status", status)),
            message,
            error_type=str(spec.get("type", etype)),
            code=spec.get("code", code),
            param=spec.get("param"),
            headers=headers,
        )

    # -- answering ----------------------------------------------------------------------------

    def answer(
        instructions: str, system_texts: list[str], user_text: str, store_ids: list[str],
        functions: Sequence[str] = (),
    ) -> tuple[str | dict[str, Any], str | None]:
        """(answer text or a scripted function call, file id it came from or None). A
        scripted call of a function the request does not offer is skipped: a model cannot call
        a tool it was not given."""
        with state.lock:
            while state.replies:
                reply = state.replies.pop(0)
                if isinstance(reply, dict):
                    if str(reply.get("name")) in functions:
                        return reply, None
                    continue
                return reply, None
            default = state.default_answer
        faqs: list[tuple[str, str, str | None]] = [
            (q, a, None) for q, a in parse_faq_text("\n".join([instructions, *system_texts]))
        ]
        faqs.extend(state.faqs_for_stores(store_ids))
        index = best_faq(user_text, [(q, a) for q, a, _ in faqs])
        if index is None:
            return default, None
        return faqs[index][1], faqs[index][2]

    def conversation_id(value: Any) -> str | None:
        if isinstance(value, dict):
            return str(value.get("id")) if value.get("id") else None
        return str(value) if value else None

    async def responses_create(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        problem = check_responses_addenda(body, state.clock.now())
        if problem is not None:
            return problem_error(problem)
        model = str(body["model"])
        info = state.model(model)
        if info is None:
            # README: "`GET /v1/models/{id}` tells whether a model exists"; a shut-down model
            # no longer does.
            return model_not_found(model)
        problem = check_model_options(body, info)
        if problem is not None:
            return problem_error(problem)
        if body.get("stream"):
            return openai_error(400, "stream=true is not supported by the fake.", param="stream")
        history: list[dict[str, Any]] = []
        conv_id = conversation_id(body.get("conversation"))
        previous_id = body.get("previous_response_id")
        with state.lock:
            if conv_id is not None:
                if conv_id not in state.conversations:
                    return openai_error(404, f"Conversation with id '{conv_id}' not found.",
                                        param="conversation")
                history = [dict(i) for i in state.conversation_items.get(conv_id, [])]
            if previous_id is not None:
                if previous_id not in state.responses:
                    return openai_error(400, f"Previous response with id '{previous_id}' not "
                                        "found.", param="previous_response_id",
                                        code="previous_response_not_found")
                history = [*state.response_inputs.get(previous_id, []),
                           *state.responses[previous_id]["output"]]
        instructions = body.get("instructions")
        # README: "`instructions` are not carried over between responses" — only this
        # request's instructions count.
        instructions_text = _content_text(instructions) if instructions else ""
        new_items = _input_items(body.get("input"))
        system_texts, user_text = split_input([*history, *new_items])
        tools = body.get("tools") or []
        store_ids: list[str] = []
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "file_search":
                for vs_id in tool.get("vector_store_ids") or []:
                    with state.lock:
                        known = vs_id in state.vector_stores
                    if not known:
                        return openai_error(
                            404, f"Vector store with id '{vs_id}' not found.", param="tools"
                        )
                    store_ids.append(vs_id)
        functions = [str(t.get("name")) for t in tools
                     if isinstance(t, dict) and t.get("type") == "function"]
        if body.get("tool_choice") == "none":
            functions = []
        replied, file_id = answer(instructions_text, system_texts, user_text, store_ids,
                                  functions)
        call = replied if isinstance(replied, dict) else None
        text = "" if call is not None else str(replied)
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        effort = str((reasoning or {}).get("effort") or info.default_effort or "none")
        with state.lock:
            reasoning_tokens = state.reasoning_tokens.get(effort, 0) if info.efforts else 0
        max_tokens = body.get("max_output_tokens")
        answer_tokens = estimate_tokens(text)
        status, incomplete = "completed", None
        if isinstance(max_tokens, int):
            # README: "`max_output_tokens` ... includes reasoning tokens".
            reasoning_tokens = min(reasoning_tokens, max_tokens)
            room = max_tokens - reasoning_tokens
            if answer_tokens > room:
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
                text = text[: room * 4] if room > 0 else ""
                answer_tokens = min(answer_tokens, max(room, 0))
        output: list[dict[str, Any]] = []
        if info.efforts and effort != "none":
            output.append({"id": random_id("rs_"), "type": "reasoning", "summary": []})
        if store_ids:
            output.append(
                {
                    "id": random_id("fs_"),
                    "type": "file_search_call",
                    "status": "completed",
                    "queries": [user_text],
                    "results": None,
                }
            )
        annotations: list[dict[str, Any]] = []
        if file_id is not None and text:
            with state.lock:
                filename = state.files.get(file_id, {}).get("filename", "")
            annotations.append(
                {"type": "file_citation", "index": len(text), "file_id": file_id,
                 "filename": filename}
            )
        if call is not None:
            arguments = call.get("arguments", {})
            output.append(
                {
                    "type": "function_call",
                    "id": random_id("fc_"),
                    "call_id": random_id("call_"),
                    "name": str(call["name"]),
                    "arguments": arguments if isinstance(arguments, str)
                    else json.dumps(arguments),
                    "status": "completed",
                }
            )
            answer_tokens = estimate_tokens(output[-1]["arguments"]) + 8
        if text:
            output.append(
                {
                    "type": "message",
                    "id": random_id("msg_"),
                    "status": status,
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": text, "annotations": annotations,
                         "logprobs": []}
                    ],
                }
            )
        input_tokens = estimate_tokens(
            instructions_text + "\n".join(system_texts) + json.dumps(body.get("input"))
            + json.dumps(history)
        )
        output_tokens = answer_tokens + reasoning_tokens
        created = state.now()
        response = {
            "id": random_id("resp_", 24),
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "completed_at": created if status == "completed" else None,
            "conversation": {"id": conv_id} if conv_id else None,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": instructions,
            "max_output_tokens": max_tokens,
            "max_tool_calls": body.get("max_tool_calls"),
            "model": model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": previous_id,
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": effort if info.efforts else None, "summary": None},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"},
                     "verbosity": (body.get("text") or {}).get("verbosity", "medium")},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": tools,
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                "total_tokens": input_tokens + output_tokens,
            },
            "metadata": body.get("metadata") or {},
        }
        if body.get("user") is not None:
            response["user"] = body["user"]
        with state.lock:
            if body.get("store", True):
                state.responses[response["id"]] = response
                state.response_inputs[response["id"]] = [*history, *new_items]
            if conv_id is not None:
                items = state.conversation_items.setdefault(conv_id, [])
                for item in [*new_items, *[o for o in output if o["type"] == "message"]]:
                    items.append(conversation_item(item))
        return JSONResponse(response)

    async def responses_get(request: Request) -> Response:
        rid = request.path_params["response_id"]
        with state.lock:
            response = state.responses.get(rid)
        if response is None:
            return openai_error(404, f"Response with id '{rid}' not found.", param="response_id")
        return JSONResponse(response)

    async def responses_delete(request: Request) -> Response:
        rid = request.path_params["response_id"]
        with state.lock:
            if state.responses.pop(rid, None) is None:
                return openai_error(404, f"Response with id '{rid}' not found.",
                                    param="response_id")
            state.response_inputs.pop(rid, None)
        return JSONResponse({"id": rid, "object": "response", "deleted": True})

    # -- conversations --------------------------------------------------------------------------

    def conversation_item(item: dict[str, Any]) -> dict[str, Any]:
        """An item as a conversation stores it: a message gets an id, a status and content
        parts (``input_text`` from the user, ``output_text`` from the assistant)."""
        out = dict(item)
        out.setdefault("id", random_id("msg_"))
        if out.get("type", "message") == "message":
            out["type"] = "message"
            out.setdefault("status", "completed")
            content = out.get("content")
            if isinstance(content, str):
                kind = "output_text" if out.get("role") == "assistant" else "input_text"
                out["content"] = [{"type": kind, "text": content}]
        return out

    def conv_object(conv_id: str) -> dict[str, Any]:
        return dict(state.conversations[conv_id])

    async def conversations_create(request: Request) -> Response:
        raw = await request.body()
        params = json.loads(raw) if raw else {}
        conv_id = random_id("conv_", 24)
        conv = {"id": conv_id, "object": "conversation",
                "created_at": state.now(), "metadata": params.get("metadata") or {}}
        with state.lock:
            state.conversations[conv_id] = conv
            state.conversation_items[conv_id] = [
                conversation_item(item) for item in params.get("items") or []
            ]
            return JSONResponse(conv_object(conv_id))

    def find_conversation(request: Request) -> str | JSONResponse:
        conv_id = request.path_params["conversation_id"]
        if conv_id not in state.conversations:
            return openai_error(404, f"Conversation with id '{conv_id}' not found.",
                                param="conversation_id")
        return str(conv_id)

    async def conversations_get(request: Request) -> Response:
        with state.lock:
            found = find_conversation(request)
            return found if isinstance(found, JSONResponse) else JSONResponse(conv_object(found))

    async def conversations_delete(request: Request) -> Response:
        with state.lock:
            found = find_conversation(request)
            if isinstance(found, JSONResponse):
                return found
            del state.conversations[found]
            state.conversation_items.pop(found, None)
        return JSONResponse({"id": found, "object": "conversation.deleted", "deleted": True})

    async def conversation_items_create(request: Request) -> Response:
        params = await request.json()
        with state.lock:
            found = find_conversation(request)
            if isinstance(found, JSONResponse):
                return found
            added = [conversation_item(item) for item in params["items"]]
            state.conversation_items[found].extend(added)
        return JSONResponse({"object": "list", "data": added, "first_id": added[0]["id"],
                             "last_id": added[-1]["id"], "has_more": False})

    async def conversation_items_list(request: Request) -> Response:
        with state.lock:
            found = find_conversation(request)
            if isinstance(found, JSONResponse):
                return found
            items = [dict(i) for i in state.conversation_items[found]]
        if request.query_params.get("order", "desc") == "desc":
            items.reverse()
        limit = int(request.query_params.get("limit", "20"))
        data = items[:limit]
        return JSONResponse({"object": "list", "data": data,
                             "first_id": data[0]["id"] if data else "",
                             "last_id": data[-1]["id"] if data else "",
                             "has_more": len(items) > limit})

    # -- chat completions (not used by the project; kept for OpenAI-compatible demos) ----------

    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        model = body.get("model")
        if not model:
            return openai_error(400, "you must provide a model parameter", param="model", code=None)
        if state.model(str(model)) is None:
            return model_not_found(str(model))
        if body.get("stream"):
            return openai_error(400, "stream=true is not supported by the fake.", param="stream")
        system_texts, user_text = split_input(body.get("messages"))
        replied, _ = answer("", system_texts, user_text, [])
        text = str(replied)
        prompt_tokens = estimate_tokens(json.dumps(body.get("messages")))
        completion_tokens = estimate_tokens(text)
        return JSONResponse(
            {
                "id": random_id("chatcmpl-", 14),
                "object": "chat.completion",
                "created": state.now(),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None,
                                    "annotations": []},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            }
        )

    # -- models -------------------------------------------------------------------------------

    def model_obj(info: ModelInfo) -> dict[str, Any]:
        return {"id": info.id, "object": "model", "created": info.created, "owned_by": "system",
                "shutdown_date": info.shutdown_date}

    async def models_list(request: Request) -> Response:
        with state.lock:
            models = list(state.models.values())
        now = state.clock.now()
        data = [model_obj(m) for m in models if not m.shut_down(now)]
        return JSONResponse({"object": "list", "data": data})

    async def models_get(request: Request) -> Response:
        model = request.path_params["model"]
        info = state.model(model)
        if info is None:
            return openai_error(404, f"The model '{model}' does not exist", param="model",
                                code="model_not_found")
        return JSONResponse(model_obj(info))

    # -- files --------------------------------------------------------------------------------

    async def files_create(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        fields, files = parse_multipart(content_type, await request.body())
        filename, data = files["file"]
        file_obj = {
            "id": random_id("file-", 11),
            "object": "file",
            "bytes": len(data),
            "created_at": state.now(),
            "filename": filename,
            "purpose": fields["purpose"],
            "status": "processed",
        }
        with state.lock:
            state.files[file_obj["id"]] = file_obj
            state.file_data[file_obj["id"]] = data
        return JSONResponse(file_obj)

    async def files_list(request: Request) -> Response:
        purpose = request.query_params.get("purpose")
        with state.lock:
            items = [
                dict(f) for f in state.files.values() if not purpose or f["purpose"] == purpose
            ]
        return JSONResponse(page(items, request))

    async def files_get(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        with state.lock:
            file_obj = state.files.get(file_id)
        if file_obj is None:
            return not_found("such File object", file_id, "file_id")
        return JSONResponse(file_obj)

    async def files_content(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        with state.lock:
            data = state.file_data.get(file_id)
        if data is None:
            return not_found("such File object", file_id, "file_id")
        return Response(data, media_type="application/octet-stream")

    async def files_delete(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        with state.lock:
            if file_id not in state.files:
                return not_found("such File object", file_id, "file_id")
            del state.files[file_id]
            state.file_data.pop(file_id, None)
            for vs_files in state.vs_files.values():
                vs_files.pop(file_id, None)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    # -- vector stores ------------------------------------------------------------------------

    def attach_file(vs_id: str, file_id: str, attributes: Any, chunking: Any) -> dict[str, Any]:
        """Attach under the lock; raises KeyError for an unknown file. The file is
        ``in_progress`` for ``indexing_seconds`` of the fake's clock."""
        file_obj = state.files[file_id]
        now = state.clock.now()
        record = {
            "id": file_id,
            "object": "vector_store.file",
            "usage_bytes": file_obj["bytes"],
            "created_at": int(now),
            "vector_store_id": vs_id,
            "status": "in_progress",
            "last_error": None,
            "attributes": attributes or {},
            "chunking_strategy": chunking
            or {
                "type": "static",
                "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
            },
            "_ready_at": now + state.indexing_seconds,
        }
        state.vs_files.setdefault(vs_id, {})[file_id] = record
        return state.vs_file(vs_id, file_id)

    def check_vs(vs_id: str) -> JSONResponse | None:
        if vs_id not in state.vector_stores:
            return openai_error(
                404, f"No vector store found with id '{vs_id}'.", param="vector_store_id"
            )
        return None

    async def vs_create(request: Request) -> Response:
        body = await request.body()
        params = json.loads(body) if body else {}
        created = state.now()
        vs_id = random_id("vs_", 16)
        expires_after = params.get("expires_after")
        vs = {
            "id": vs_id,
            "object": "vector_store",
            "created_at": created,
            "name": params.get("name") or "",
            "description": params.get("description"),
            "usage_bytes": 0,
            "file_counts": {},
            "status": "completed",
            "expires_at": created + 86400 * int(expires_after["days"]) if expires_after else None,
            "last_active_at": created,
            "metadata": params.get("metadata") or {},
        }
        if expires_after:
            vs["expires_after"] = expires_after
        with state.lock:
            for file_id in params.get("file_ids") or []:
                if file_id not in state.files:
                    return not_found("such File object", file_id, "file_ids")
            state.vector_stores[vs_id] = vs
            state.vs_files[vs_id] = {}
            for file_id in params.get("file_ids") or []:
                attach_file(vs_id, file_id, None, params.get("chunking_strategy"))
            return JSONResponse(state.vs_object(vs_id))

    async def vs_list(request: Request) -> Response:
        with state.lock:
            items = [state.vs_object(vs_id) for vs_id in state.vector_stores]
        return JSONResponse(page(items, request))

    async def vs_get(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        with state.lock:
            return check_vs(vs_id) or JSONResponse(state.vs_object(vs_id))

    async def vs_update(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        params = await request.json()
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            vs = state.vector_stores[vs_id]
            for key in ("name", "metadata", "expires_after"):
                if key in params:
                    vs[key] = params[key]
            if params.get("expires_after"):
                vs["expires_at"] = state.now() + 86400 * int(params["expires_after"]["days"])
            vs["last_active_at"] = state.now()
            return JSONResponse(state.vs_object(vs_id))

    async def vs_delete(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            del state.vector_stores[vs_id]
            state.vs_files.pop(vs_id, None)
        return JSONResponse({"id": vs_id, "object": "vector_store.deleted", "deleted": True})

    async def vs_files_create(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        params = await request.json()
        file_id = params["file_id"]
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            if file_id not in state.files:
                return not_found("such File object", file_id, "file_id")
            vs_file = attach_file(
                vs_id, file_id, params.get("attributes"), params.get("chunking_strategy")
            )
            return JSONResponse(vs_file)

    async def vs_files_list(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        wanted = request.query_params.get("filter")
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            items = [state.vs_file(vs_id, f) for f in state.vs_files.get(vs_id, {})]
        items = [f for f in items if not wanted or f["status"] == wanted]
        return JSONResponse(page(items, request))

    async def vs_files_get(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        file_id = request.path_params["file_id"]
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            if file_id not in state.vs_files.get(vs_id, {}):
                return not_found("file", file_id, "file_id")
            return JSONResponse(state.vs_file(vs_id, file_id))

    async def vs_files_delete(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        file_id = request.path_params["file_id"]
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            if state.vs_files.get(vs_id, {}).pop(file_id, None) is None:
                return not_found("file", file_id, "file_id")
        return JSONResponse({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})

    def batch_obj(batch: dict[str, Any]) -> dict[str, Any]:
        files = state.vs_files.get(batch["vector_store_id"], {})
        statuses = [state.vs_file(batch["vector_store_id"], f)["status"]
                    for f in batch["file_ids"] if f in files]
        counts = {s: statuses.count(s) for s in ("in_progress", "completed", "failed")}
        if batch["status"] == "cancelled":
            counts["cancelled"] = counts.pop("in_progress", 0)
            counts["in_progress"] = 0
        else:
            counts["cancelled"] = 0
        status = batch["status"]
        if status != "cancelled":
            status = "in_progress" if counts["in_progress"] else (
                "failed" if counts["failed"] and not counts["completed"] else "completed")
        return {
            "id": batch["id"],
            "object": "vector_store.files_batch",
            "created_at": batch["created_at"],
            "vector_store_id": batch["vector_store_id"],
            "status": status,
            "file_counts": {**counts, "total": len(batch["file_ids"])},
        }

    async def batches_create(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        params = await request.json()
        file_ids = list(params.get("file_ids") or [])
        for item in params.get("files") or []:
            file_ids.append(item["file_id"])
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            for file_id in file_ids:
                if file_id not in state.files:
                    return not_found("such File object", file_id, "file_ids")
            for file_id in file_ids:
                attach_file(
                    vs_id, file_id, params.get("attributes"), params.get("chunking_strategy")
                )
            batch = {
                "id": random_id("vsfb_", 16),
                "created_at": state.now(),
                "vector_store_id": vs_id,
                "status": "in_progress",
                "file_ids": file_ids,
            }
            state.batches[batch["id"]] = batch
            return JSONResponse(batch_obj(batch))

    def find_batch(request: Request) -> dict[str, Any] | None:
        batch = state.batches.get(request.path_params["batch_id"])
        if batch is None or batch["vector_store_id"] != request.path_params["vs_id"]:
            return None
        return batch

    async def batches_get(request: Request) -> Response:
        with state.lock:
            batch = find_batch(request)
            if batch is None:
                return not_found("batch", request.path_params["batch_id"], "batch_id")
            return JSONResponse(batch_obj(batch))

    async def batches_cancel(request: Request) -> Response:
        with state.lock:
            batch = find_batch(request)
            if batch is None:
                return not_found("batch", request.path_params["batch_id"], "batch_id")
            if batch_obj(batch)["status"] == "in_progress":
                batch["status"] = "cancelled"
            return JSONResponse(batch_obj(batch))

    async def batches_files(request: Request) -> Response:
        with state.lock:
            batch = find_batch(request)
            if batch is None:
                return not_found("batch", request.path_params["batch_id"], "batch_id")
            vs_id = batch["vector_store_id"]
            items = [state.vs_file(vs_id, f) for f in batch["file_ids"]
                     if f in state.vs_files.get(vs_id, {})]
        return JSONResponse(page(items, request))

    async def vs_search(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        params = await request.json()
        query = params.get("query")
        query_text = " ".join(query) if isinstance(query, list) else str(query or "")
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
        faqs = state.faqs_for_stores([vs_id])
        wanted = tokens(query_text)
        scored = []
        for q, a, file_id in faqs:
            overlap = len(wanted & tokens(q))
            if overlap:
                scored.append((overlap / max(len(tokens(q)), 1), q, a, file_id))
        scored.sort(key=lambda s: -s[0])
        data = []
        with state.lock:
            for score, q, a, file_id in scored[: int(params.get("max_num_results", 10))]:
                data.append(
                    {
                        "file_id": file_id,
                        "filename": state.files.get(file_id, {}).get("filename", ""),
                        "score": round(min(score, 1.0), 4),
                        "attributes": {},
                        "content": [{"type": "text", "text": f"Q: {q}\nA: {a}"}],
                    }
                )
        return JSONResponse(
            {
                "object": "vector_store.search_results.page",
                "search_query": [query_text],
                "data": data,
                "has_more": False,
                "next_page": None,
            }
        )

    # -- control ------------------------------------------------------------------------------

    async def c_calls(request: Request) -> Response:
        with state.lock:
            return JSONResponse(dict(state.calls))

    async def c_requests(request: Request) -> Response:
        endpoint = request.query_params.get("endpoint")
        with state.lock:
            items = [
                dict(r) for r in state.request_log if endpoint is None or endpoint in r["endpoint"]
            ]
        return JSONResponse(items)

    async def c_errors(request: Request) -> Response:
        if request.method == "GET":
            with state.lock:
                return JSONResponse([dict(e) for e in state.errors])
        body = await request.json()
        items = body.get("errors", []) if isinstance(body, dict) else body
        specs: list[dict[str, Any]] = []
        for item in items:
            spec = {"kind": item} if isinstance(item, str) else dict(item)
            if spec.get("kind", "server_error") not in {*ERROR_PRESETS, "timeout"}:
                return JSONResponse(
                    {"detail": f"unknown error kind {spec.get('kind')!r}"}, status_code=400
                )
            specs.append(spec)
        with state.lock:
            if isinstance(body, dict) and body.get("replace"):
                state.errors.clear()
            state.errors.extend(specs)
            return JSONResponse({"pending": len(state.errors)})

    async def c_latency(request: Request) -> Response:
        body = await request.json()
        with state.lock:
            state.latency = float(body.get("seconds", 0.0))
        return JSONResponse({"latency": state.latency})

    async def c_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def c_config(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            unknown = set(body) - set(state.config())
            if unknown:
                return JSONResponse({"detail": f"unknown settings {sorted(unknown)}"}, 400)
            with state.lock:
                for key, value in body.items():
                    if key == "reasoning_tokens":
                        state.reasoning_tokens.update({str(k): int(v) for k, v in value.items()})
                    else:
                        setattr(state, key, value)
        return JSONResponse(state.config())

    async def c_state(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def c_replies(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            with state.lock:
                if body.get("replace"):
                    state.replies.clear()
                for reply in body.get("replies", []):
                    if isinstance(reply, dict) and isinstance(reply.get("function_call"), dict):
                        state.replies.append(dict(reply["function_call"]))
                    else:
                        state.replies.append(str(reply))
        with state.lock:
            return JSONResponse(list(state.replies))

    async def c_models(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            efforts = tuple(body.get("efforts") or ())
            info = ModelInfo(
                id=str(body["id"]),
                created=int(body.get("created", state.now())),
                shutdown_date=body.get("shutdown_date"),
                efforts=efforts,
                default_effort=body.get("default_effort") or (efforts[0] if efforts else None),
                verbosities=tuple(body.get("verbosities") or _ALL_VERBOSITY),
            )
            with state.lock:
                if body.get("remove"):
                    state.models.pop(info.id, None)
                else:
                    state.models[info.id] = info
        with state.lock:
            return JSONResponse([asdict(m) for m in state.models.values()])

    def r(path: str, handler: Handler, method: str) -> Route:
        return Route(path, api(f"{method} {path}", handler), methods=[method])

    vs = "/v1/vector_stores/{vs_id}"
    batch = vs + "/file_batches/{batch_id}"
    conv = "/v1/conversations/{conversation_id}"
    routes = [
        Route("/_fake/calls", c_calls, methods=["GET"]),
        Route("/_fake/requests", c_requests, methods=["GET"]),
        Route("/_fake/errors", c_errors, methods=["GET", "POST"]),
        Route("/_fake/latency", c_latency, methods=["POST"]),
        Route("/_fake/reset", c_reset, methods=["POST"]),
        Route("/_fake/config", c_config, methods=["GET", "POST"]),
        Route("/_fake/state", c_state, methods=["GET"]),
        Route("/_fake/replies", c_replies, methods=["GET", "POST"]),
        Route("/_fake/models", c_models, methods=["GET", "POST"]),
        clock_route(state.clock),
        r("/v1/responses", responses_create, "POST"),
        r("/v1/responses/{response_id}", responses_get, "GET"),
        r("/v1/responses/{response_id}", responses_delete, "DELETE"),
        r("/v1/conversations", conversations_create, "POST"),
        r(conv, conversations_get, "GET"),
        r(conv, conversations_delete, "DELETE"),
        r(conv + "/items", conversation_items_create, "POST"),
        r(conv + "/items", conversation_items_list, "GET"),
        r("/v1/chat/completions", chat_completions, "POST"),
        r("/v1/models", models_list, "GET"),
        r("/v1/models/{model}", models_get, "GET"),
        r("/v1/files", files_create, "POST"),
        r("/v1/files", files_list, "GET"),
        r("/v1/files/{file_id}", files_get, "GET"),
        r("/v1/files/{file_id}", files_delete, "DELETE"),
        r("/v1/files/{file_id}/content", files_content, "GET"),
        r("/v1/vector_stores", vs_create, "POST"),
        r("/v1/vector_stores", vs_list, "GET"),
        r(vs, vs_get, "GET"),
        r(vs, vs_update, "POST"),
        r(vs, vs_delete, "DELETE"),
        r(vs + "/files", vs_files_create, "POST"),
        r(vs + "/files", vs_files_list, "GET"),
        r(vs + "/files/{file_id}", vs_files_get, "GET"),
        r(vs + "/files/{file_id}", vs_files_delete, "DELETE"),
        r(vs + "/file_batches", batches_create, "POST"),
        r(batch, batches_get, "GET"),
        r(batch + "/cancel", batches_cancel, "POST"),
        r(batch + "/files", batches_files, "GET"),
        r(vs + "/search", vs_search, "POST"),
    ]
    app = Starlette(routes=routes)

    async def not_found_handler(request: Request, exc: Exception) -> Response:
        return openai_error(404, f"Invalid URL ({request.method} {request.url.path})")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return openai_error(405, f"Invalid method for URL ({request.method} {request.url.path})")

    app.add_exception_handler(404, not_found_handler)
    app.add_exception_handler(405, method_not_allowed)
    return app


class FakeOpenAI(FakeServer):
    """The OpenAI API fake. ``FakeOpenAI().start()`` (thread) or ``FakeOpenAI.spawn()`` (child
    process); both are context managers and share this control API.

    ``api_key``: the Bearer key to accept (None: any non-empty key).
    ``indexing_seconds``: how long (on the fake's clock) a vector-store file is ``in_progress``.
    """

    module: ClassVar[str] = "released.fakes.openai"
    name: ClassVar[str] = "fake-openai"

    def __init__(
        self,
        api_key: str | None = DEFAULT_API_KEY,
        *,
        latency: float = 0.0,
        indexing_seconds: float = DEFAULT_INDEXING_SECONDS,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.state = OpenAIState(api_key=api_key, latency=latency,
                                 indexing_seconds=indexing_seconds)

    @property
    def path_prefix(self) -> str:
        return "/v1"

    def build_app(self) -> Starlette:
        return create_app(self.state, self)

    def cli_args(self) -> list[str]:
        args = ["--latency", str(self.state.latency),
                "--indexing-seconds", str(self.state.indexing_seconds)]
        if self.state.api_key is None:
            args.append("--any-key")
        else:
            args += ["--api-key", self.state.api_key]
        return args

    # -- control API ----------------------------------------------------------------------------

    def script_errors(self, errors: Sequence[str | dict[str, Any]]) -> None:
        """Queue error answers for the next API calls, one per call, in order.

        Items: a preset name (``"rate_limit"`` 429 + ``Retry-After: 1`` + code
        ``rate_limit_exceeded``; ``"quota"`` 429 ``insufficient_quota``; ``"server_error"`` 500;
        ``"bad_gateway"`` 502; ``"unavailable"`` 503; ``"auth"`` 401; ``"bad_request"`` 400;
        ``"not_found"`` 404; ``"timeout"``: sleep ``delay`` seconds, default 30, then answer
        normally) or a dict with ``kind`` and any of ``status``, ``message``, ``type``, ``code``,
        ``param``, ``retry_after``, ``headers``, ``delay``, ``times``, ``endpoint`` (only calls
        whose endpoint key contains it, e.g. ``"/v1/responses"``).
        """
        self._post("/errors", {"errors": list(errors)})

    def state_snapshot(self) -> dict[str, Any]:
        """``{"files": [file objects], "vector_stores": [vector store objects + "file_ids"],
        "responses": count, "conversations": count}``."""
        result: dict[str, Any] = self._get("/state")
        return result

    def files(self) -> list[dict[str, Any]]:
        return list(self.state_snapshot()["files"])

    def vector_stores(self) -> list[dict[str, Any]]:
        return list(self.state_snapshot()["vector_stores"])

    def script_replies(
        self, replies: Sequence[str | dict[str, Any]], *, replace: bool = False
    ) -> None:
        """The next responses answer these texts, in order, whatever the FAQs say. An item
        ``{"function_call": {"name": N, "arguments": {...}}}`` answers with a ``function_call``
        output item instead, when the request offers a function tool named N (else it is
        skipped: a model cannot call a tool it was not given)."""
        self._post("/replies", {"replies": list(replies), "replace": replace})

    def set_default_answer(self, text: str) -> None:
        """The answer when no FAQ matches (default ``"I don't know."``)."""
        self.configure(default_answer=text)

    def response_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies sent to ``POST /v1/responses``, oldest first (refused ones too)."""
        return [r["body"] for r in self.requests("POST /v1/responses")]

    def models(self) -> list[dict[str, Any]]:
        """Every model the fake knows, shut down or not: ``id``, ``created``,
        ``shutdown_date``, ``efforts``, ``default_effort``, ``verbosities``."""
        result: list[dict[str, Any]] = self._get("/models")
        return result

    def add_model(
        self,
        model_id: str,
        *,
        shutdown_date: str | date | None = None,
        efforts: Sequence[str] = (),
        default_effort: str | None = None,
    ) -> None:
        """Make a model exist (``shutdown_date``: refused from that day on, by the clock)."""
        when = shutdown_date.isoformat() if isinstance(shutdown_date, date) else shutdown_date
        self._post("/models", {"id": model_id, "shutdown_date": when, "efforts": list(efforts),
                               "default_effort": default_effort})

    def remove_model(self, model_id: str) -> None:
        self._post("/models", {"id": model_id, "remove": True})


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--any-key", action="store_true", help="accept any Bearer key")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--indexing-seconds", type=float, default=DEFAULT_INDEXING_SECONDS)


def _factory(args: argparse.Namespace) -> FakeServer:
    return FakeOpenAI(None if args.any_key else args.api_key, latency=args.latency,
                      indexing_seconds=args.indexing_seconds)


def main(argv: Sequence[str] | None = None) -> None:
    serve_cli("openai", _factory, _add_arguments, argv)


if __name__ == "__main__":
    main()
