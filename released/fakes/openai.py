"""A fake of the OpenAI API for tests and local demos; works with the real ``openai`` SDK.

Base URL: ``http://127.0.0.1:PORT/v1`` (``openai.OpenAI(base_url=fake.url, api_key=...)``).

API routes (Bearer key required):

- ``POST /v1/responses`` (``GET /v1/responses/{id}``): answers deterministically. FAQ pairs
  come from ``instructions``, system/developer messages in ``input`` (lines ``Q: ...`` /
  ``A: ...``) and, with a ``file_search`` tool, from the files of its vector stores (JSON
  ``[{"q","a"}]`` / ``{"faqs": [...]}`` / ``question``+``answer`` keys, or ``Q:``/``A:`` text).
  The FAQ whose question shares the most words with the last user message is answered with its
  answer text exactly; with no overlap the answer is ``"I don't know."``.
- ``POST /v1/chat/completions``: the same logic on ``messages``.
- ``POST /v1/files`` (multipart), ``GET /v1/files``, ``GET|DELETE /v1/files/{id}``,
  ``GET /v1/files/{id}/content``.
- ``POST|GET /v1/vector_stores``, ``GET|POST|DELETE /v1/vector_stores/{id}``,
  ``POST|GET /v1/vector_stores/{id}/files``, ``GET|DELETE /v1/vector_stores/{id}/files/{fid}``,
  ``POST /v1/vector_stores/{id}/file_batches``, ``GET .../file_batches/{bid}`` (+ ``/files``,
  ``/cancel``), ``POST /v1/vector_stores/{id}/search``. Everything is ``completed`` at once.
- ``GET /v1/models``, ``GET /v1/models/{id}``.

Control routes (no auth), JSON: ``GET /_fake/calls``, ``GET /_fake/requests``,
``GET|POST /_fake/errors``, ``POST /_fake/latency``, ``POST /_fake/reset``,
``GET|POST /_fake/config``, ``GET /_fake/state``, ``GET|POST /_fake/replies``.

Run alone: ``python -m released.fakes.openai --port 8082 [--api-key K | --any-key]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from released.fakes._base import (
    BaseState,
    FakeServer,
    loggable_headers,
    now,
    random_id,
    serve_cli,
    sleep_unless_stopping,
)

DEFAULT_API_KEY = "sk-test-fake-openai-key"
UNKNOWN_ANSWER = "I don't know."
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "gpt-5-mini", "gpt-5"]
FILE_PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}

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
    """Files, vector stores, responses and recordings; guarded by ``lock``."""

    def __init__(self, *, api_key: str | None = DEFAULT_API_KEY, latency: float = 0.0) -> None:
        super().__init__(latency)
        self.api_key = api_key
        self.default_answer = UNKNOWN_ANSWER
        self.files: dict[str, dict[str, Any]] = {}
        self.file_data: dict[str, bytes] = {}
        self.vector_stores: dict[str, dict[str, Any]] = {}
        self.vs_files: dict[str, dict[str, dict[str, Any]]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.responses: dict[str, dict[str, Any]] = {}
        self.replies: list[str] = []

    def reset(self) -> None:
        with self.lock:
            self.reset_recordings()
            self.files.clear()
            self.file_data.clear()
            self.vector_stores.clear()
            self.vs_files.clear()
            self.batches.clear()
            self.responses.clear()
            self.replies.clear()

    def config(self) -> dict[str, Any]:
        with self.lock:
            return {
                "api_key": self.api_key,
                "latency": self.latency,
                "default_answer": self.default_answer,
            }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "files": [dict(f) for f in self.files.values()],
                "vector_stores": [
                    {**vs, "file_ids": list(self.vs_files.get(vs_id, {}))}
                    for vs_id, vs in self.vector_stores.items()
                ],
                "responses": len(self.responses),
            }

    def vs_object(self, vs_id: str) -> dict[str, Any]:
        vs = self.vector_stores[vs_id]
        files = self.vs_files.get(vs_id, {})
        n = len(files)
        vs["file_counts"] = {
            "in_progress": 0,
            "completed": n,
            "failed": 0,
            "cancelled": 0,
            "total": n,
        }
        vs["usage_bytes"] = sum(f["usage_bytes"] for f in files.values())
        return dict(vs)

    def faqs_for_stores(self, store_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(question, answer, file_id) of every FAQ in the files of these vector stores."""
        out: list[tuple[str, str, str]] = []
        with self.lock:
            for vs_id in store_ids:
                for file_id in self.vs_files.get(vs_id, {}):
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


def not_found(kind: str, object_id: str) -> JSONResponse:
    return openai_error(404, f"No {kind} found with id '{object_id}'.")


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
                "at": time.time(),
            }
            state.count(endpoint, entry)
            response = await guarded(request, endpoint, handler)
            response.headers["x-request-id"] = random_id("req_", 16)
            entry["status"] = response.status_code
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
        spec = state.take_error(endpoint)
        if spec is not None:
            kind = str(spec.get("kind", "server_error"))
            if kind == "timeout":
                await _sleep(float(spec.get("delay", 30.0)))
            else:
                if spec.get("delay"):
                    await _sleep(float(spec["delay"]))
                return error_from_spec(spec, request)
        try:
            return await handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            return openai_error(400, f"Invalid request: {exc}")

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
            model="gpt-4o-mini", retry_after=retry_after
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
        instructions: str, system_texts: list[str], user_text: str, store_ids: list[str]
    ) -> tuple[str, str | None]:
        """(answer text, file id it came from or None)."""
        with state.lock:
            if state.replies:
                return state.replies.pop(0), None
            default = state.default_answer
        faqs: list[tuple[str, str, str | None]] = [
            (q, a, None) for q, a in parse_faq_text("\n".join([instructions, *system_texts]))
        ]
        faqs.extend(state.faqs_for_stores(store_ids))
        index = best_faq(user_text, [(q, a) for q, a, _ in faqs])
        if index is None:
            return default, None
        return faqs[index][1], faqs[index][2]

    async def responses_create(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        model = body.get("model")
        if not model:
            return openai_error(
                400,
                "Missing required parameter: 'model'.",
                param="model",
                code="missing_required_parameter",
            )
        if body.get("stream"):
            return openai_error(400, "stream=true is not supported by the fake.", param="stream")
        instructions = body.get("instructions")
        instructions_text = _content_text(instructions) if instructions else ""
        system_texts, user_text = split_input(body.get("input"))
        tools = body.get("tools") or []
        store_ids: list[str] = []
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "file_search":
                for vs_id in tool.get("vector_store_ids") or []:
                    with state.lock:
                        known = vs_id in state.vector_stores
                    if not known:
                        return openai_error(
                            404,
                            f"Vector store with id '{vs_id}' not found.",
                            param="tools",
                        )
                    store_ids.append(vs_id)
        text, file_id = answer(instructions_text, system_texts, user_text, store_ids)
        status = "completed"
        incomplete: dict[str, str] | None = None
        max_tokens = body.get("max_output_tokens")
        if isinstance(max_tokens, int) and estimate_tokens(text) > max_tokens:
            text = text[: max(1, max_tokens * 4)]
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        output: list[dict[str, Any]] = []
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
        if file_id is not None:
            with state.lock:
                filename = state.files.get(file_id, {}).get("filename", "")
            annotations.append(
                {
                    "type": "file_citation",
                    "index": len(text),
                    "file_id": file_id,
                    "filename": filename,
                }
            )
        output.append(
            {
                "type": "message",
                "id": random_id("msg_"),
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": text,
                        "annotations": annotations,
                        "logprobs": [],
                    }
                ],
            }
        )
        input_tokens = estimate_tokens(
            instructions_text + "\n".join(system_texts) + json.dumps(body.get("input"))
        )
        output_tokens = estimate_tokens(text)
        created = now()
        response = {
            "id": random_id("resp_", 24),
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "completed_at": created,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": instructions,
            "max_output_tokens": max_tokens,
            "max_tool_calls": body.get("max_tool_calls"),
            "model": model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": tools,
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }
        if body.get("store", True):
            with state.lock:
                state.responses[response["id"]] = response
        return JSONResponse(response)

    async def responses_get(request: Request) -> Response:
        rid = request.path_params["response_id"]
        with state.lock:
            response = state.responses.get(rid)
        if response is None:
            return openai_error(404, f"Response with id '{rid}' not found.", param="response_id")
        return JSONResponse(response)

    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        model = body.get("model")
        if not model:
            return openai_error(400, "you must provide a model parameter", param="model", code=None)
        if body.get("stream"):
            return openai_error(400, "stream=true is not supported by the fake.", param="stream")
        system_texts, user_text = split_input(body.get("messages"))
        text, _ = answer("", system_texts, user_text, [])
        prompt_tokens = estimate_tokens(json.dumps(body.get("messages")))
        completion_tokens = estimate_tokens(text)
        return JSONResponse(
            {
                "id": random_id("chatcmpl-", 14),
                "object": "chat.completion",
                "created": now(),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": [],
                        },
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

    def model_obj(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "system"}

    async def models_list(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_obj(m) for m in MODELS]})

    async def models_get(request: Request) -> Response:
        return JSONResponse(model_obj(request.path_params["model"]))

    # -- files --------------------------------------------------------------------------------

    async def files_create(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if "multipart/form-data" not in content_type:
            return openai_error(400, "The request must be multipart/form-data.")
        fields, files = parse_multipart(content_type, await request.body())
        purpose = fields.get("purpose")
        if not purpose:
            return openai_error(400, "Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in FILE_PURPOSES:
            return openai_error(
                400,
                f"'{purpose}' is not one of {sorted(FILE_PURPOSES)} - 'purpose'",
                param="purpose",
            )
        if "file" not in files:
            return openai_error(400, "Missing required parameter: 'file'.", param="file")
        filename, data = files["file"]
        file_obj = {
            "id": random_id("file-", 11),
            "object": "file",
            "bytes": len(data),
            "created_at": now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
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
            return not_found("such File object", file_id)
        return JSONResponse(file_obj)

    async def files_content(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        with state.lock:
            data = state.file_data.get(file_id)
        if data is None:
            return not_found("such File object", file_id)
        return Response(data, media_type="application/octet-stream")

    async def files_delete(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        with state.lock:
            if file_id not in state.files:
                return not_found("such File object", file_id)
            del state.files[file_id]
            state.file_data.pop(file_id, None)
            for files in state.vs_files.values():
                files.pop(file_id, None)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    # -- vector stores ------------------------------------------------------------------------

    def attach_file(vs_id: str, file_id: str, attributes: Any, chunking: Any) -> dict[str, Any]:
        """Attach under the lock; raises KeyError for an unknown file."""
        file_obj = state.files[file_id]
        vs_file = {
            "id": file_id,
            "object": "vector_store.file",
            "usage_bytes": file_obj["bytes"],
            "created_at": now(),
            "vector_store_id": vs_id,
            "status": "completed",
            "last_error": None,
            "attributes": attributes or {},
            "chunking_strategy": chunking
            or {
                "type": "static",
                "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
            },
        }
        state.vs_files.setdefault(vs_id, {})[file_id] = vs_file
        return vs_file

    def check_vs(vs_id: str) -> JSONResponse | None:
        if vs_id not in state.vector_stores:
            return openai_error(
                404, f"No vector store found with id '{vs_id}'.", param="vector_store_id"
            )
        return None

    async def vs_create(request: Request) -> Response:
        body = await request.body()
        params = json.loads(body) if body else {}
        created = now()
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
            "expires_after": expires_after,
            "expires_at": created + 86400 * int(expires_after["days"]) if expires_after else None,
            "last_active_at": created,
            "metadata": params.get("metadata") or {},
        }
        with state.lock:
            for file_id in params.get("file_ids") or []:
                if file_id not in state.files:
                    return not_found("such File object", file_id)
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
                vs["expires_at"] = now() + 86400 * int(params["expires_after"]["days"])
            vs["last_active_at"] = now()
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
        file_id = params.get("file_id")
        if not file_id:
            return openai_error(400, "Missing required parameter: 'file_id'.", param="file_id")
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            if file_id not in state.files:
                return not_found("such File object", file_id)
            vs_file = attach_file(
                vs_id, file_id, params.get("attributes"), params.get("chunking_strategy")
            )
            return JSONResponse(dict(vs_file))

    async def vs_files_list(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        wanted = request.query_params.get("filter")
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            items = [
                dict(f)
                for f in state.vs_files.get(vs_id, {}).values()
                if not wanted or f["status"] == wanted
            ]
        return JSONResponse(page(items, request))

    async def vs_files_get(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        file_id = request.path_params["file_id"]
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            vs_file = state.vs_files.get(vs_id, {}).get(file_id)
            if vs_file is None:
                return not_found("file", file_id)
            return JSONResponse(dict(vs_file))

    async def vs_files_delete(request: Request) -> Response:
        vs_id = request.path_params["vs_id"]
        file_id = request.path_params["file_id"]
        with state.lock:
            problem = check_vs(vs_id)
            if problem:
                return problem
            if state.vs_files.get(vs_id, {}).pop(file_id, None) is None:
                return not_found("file", file_id)
        return JSONResponse({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})

    def batch_obj(batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["file_ids"])
        return {
            "id": batch["id"],
            "object": "vector_store.files_batch",
            "created_at": batch["created_at"],
            "vector_store_id": batch["vector_store_id"],
            "status": batch["status"],
            "file_counts": {
                "in_progress": 0,
                "completed": n if batch["status"] == "completed" else 0,
                "failed": 0,
                "cancelled": n if batch["status"] == "cancelled" else 0,
                "total": n,
            },
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
                    return not_found("such File object", file_id)
            for file_id in file_ids:
                attach_file(
                    vs_id, file_id, params.get("attributes"), params.get("chunking_strategy")
                )
            batch = {
                "id": random_id("vsfb_", 16),
                "created_at": now(),
                "vector_store_id": vs_id,
                "status": "completed",
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
                return not_found("batch", request.path_params["batch_id"])
            return JSONResponse(batch_obj(batch))

    async def batches_cancel(request: Request) -> Response:
        with state.lock:
            batch = find_batch(request)
            if batch is None:
                return not_found("batch", request.path_params["batch_id"])
            return JSONResponse(batch_obj(batch))

    async def batches_files(request: Request) -> Response:
        with state.lock:
            batch = find_batch(request)
            if batch is None:
                return not_found("batch", request.path_params["batch_id"])
            files = state.vs_files.get(batch["vector_store_id"], {})
            items = [dict(files[f]) for f in batch["file_ids"] if f in files]
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
                state.replies.extend(str(r) for r in body.get("replies", []))
        with state.lock:
            return JSONResponse(list(state.replies))

    def r(path: str, handler: Handler, method: str) -> Route:
        return Route(path, api(f"{method} {path}", handler), methods=[method])

    vs = "/v1/vector_stores/{vs_id}"
    batch = vs + "/file_batches/{batch_id}"
    routes = [
        Route("/_fake/calls", c_calls, methods=["GET"]),
        Route("/_fake/requests", c_requests, methods=["GET"]),
        Route("/_fake/errors", c_errors, methods=["GET", "POST"]),
        Route("/_fake/latency", c_latency, methods=["POST"]),
        Route("/_fake/reset", c_reset, methods=["POST"]),
        Route("/_fake/config", c_config, methods=["GET", "POST"]),
        Route("/_fake/state", c_state, methods=["GET"]),
        Route("/_fake/replies", c_replies, methods=["GET", "POST"]),
        r("/v1/responses", responses_create, "POST"),
        r("/v1/responses/{response_id}", responses_get, "GET"),
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
    """

    module: ClassVar[str] = "released.fakes.openai"
    name: ClassVar[str] = "fake-openai"

    def __init__(self, api_key: str | None = DEFAULT_API_KEY, *, latency: float = 0.0) -> None:
        super().__init__()
        self.api_key = api_key
        self.state = OpenAIState(api_key=api_key, latency=latency)

    @property
    def path_prefix(self) -> str:
        return "/v1"

    def build_app(self) -> Starlette:
        return create_app(self.state, self)

    def cli_args(self) -> list[str]:
        args = ["--latency", str(self.state.latency)]
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
        "responses": count}``."""
        result: dict[str, Any] = self._get("/state")
        return result

    def files(self) -> list[dict[str, Any]]:
        return list(self.state_snapshot()["files"])

    def vector_stores(self) -> list[dict[str, Any]]:
        return list(self.state_snapshot()["vector_stores"])

    def script_replies(self, replies: Sequence[str], *, replace: bool = False) -> None:
        """The next responses answer these texts, in order, whatever the FAQs say."""
        self._post("/replies", {"replies": list(replies), "replace": replace})

    def set_default_answer(self, text: str) -> None:
        """The answer when no FAQ matches (default ``"I don't know."``)."""
        self.configure(default_answer=text)

    def response_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies sent to ``POST /v1/responses``, oldest first."""
        return [r["body"] for r in self.requests("POST /v1/responses")]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--any-key", action="store_true", help="accept any Bearer key")
    parser.add_argument("--latency", type=float, default=0.0)


def _factory(args: argparse.Namespace) -> FakeServer:
    return FakeOpenAI(None if args.any_key else args.api_key, latency=args.latency)


def main(argv: Sequence[str] | None = None) -> None:
    serve_cli("openai", _factory, _add_arguments, argv)


if __name__ == "__main__":
    main()
