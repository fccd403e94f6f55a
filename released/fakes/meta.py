"""A fake of Meta's WhatsApp Cloud API (Graph API) for tests and local demos.

Base URL: ``http://127.0.0.1:PORT/v23.0`` (any ``/vNN.N`` prefix is accepted).

API routes (Bearer token required, like the Graph API):

- ``POST /{version}/{phone_number_id}/messages``: send a message (recorded in ``sent``), or mark
  one as read (``{"status": "read", "message_id": ...}``, recorded in ``reads``).
- ``POST /{version}/{phone_number_id}``: update the phone number; ``webhook_configuration``
  (``{"override_callback_uri": ..., "verify_token": ...}``) sets the callback override, an empty
  ``override_callback_uri`` removes it. JSON body, form body or query string.
- ``GET /{version}/{phone_number_id}?fields=webhook_configuration``.
- ``POST|GET /{version}/{waba_id}/subscribed_apps``: the WABA-level override (same rules).

Control routes (no auth), all JSON: ``GET /_fake/sent``, ``GET /_fake/reads``,
``GET /_fake/webhooks``, ``GET|POST /_fake/errors``, ``POST /_fake/reset``,
``GET|POST /_fake/config``, ``POST /_fake/latency``, ``GET /_fake/calls``,
``GET /_fake/requests``, ``POST /_fake/deliver`` (send a signed webhook to the bot).

Run alone: ``python -m released.fakes.meta --port 8081 [--access-token T] [--app-secret S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from released.fakes._base import (
    BaseState,
    FakeServer,
    loggable_headers,
    serve_cli,
    sleep_unless_stopping,
)

DEFAULT_VERSION = "v23.0"
VERSION_RE = re.compile(r"^v\d+(\.\d+)?$")
DEFAULT_APP_CALLBACK = "https://app-callback.example.invalid/webhook"
DEFAULT_ACCESS_TOKEN = "test-meta-token"
DEFAULT_APP_SECRET = "test-app-secret"

# Presets for script_errors(): name -> (http status, code, title, details, error_subcode).
# Shapes follow Meta's "Error codes" reference; 130429/131056 are answered with HTTP 429 here
# (Meta may also use 400 for them, so clients should decide on ``code``; use "status" to change).
ERROR_PRESETS: dict[str, tuple[int, int, str, str, int | None]] = {
    "rate_limit": (
        429,
        130429,
        "Rate limit hit",
        "Cloud API message throughput has been reached.",
        2494055,
    ),
    "pair_rate_limit": (
        429,
        131056,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this phone "
        "number to the same phone number in a short period of time.",
        2494071,
    ),
    "re_engagement": (
        400,
        131047,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
        2494078,
    ),
    "undeliverable": (
        400,
        131026,
        "Message Undeliverable",
        "Unable to deliver message. Reasons can include: the recipient phone number is not a "
        "WhatsApp phone number; the recipient has not accepted our new Terms of Service.",
        None,
    ),
    "auth": (
        401,
        190,
        "Invalid OAuth access token - Cannot parse access token",
        "",
        None,
    ),
    "server_error": (
        500,
        1,
        "An unknown error occurred",
        "Invalid request or possible server error.",
        None,
    ),
    "unavailable": (
        503,
        2,
        "Service temporarily unavailable",
        "Temporary due to downtime or due to being overloaded.",
        None,
    ),
    "invalid_parameter": (400, 100, "Invalid parameter", "Invalid parameter", None),
    "timeout": (504, 2, "Service temporarily unavailable", "The request timed out.", None),
}


def fbtrace_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(9)).decode().rstrip("=")


def new_wamid() -> str:
    raw = b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(18)
    return "wamid." + base64.b64encode(raw).decode()


def graph_error(
    status: int,
    code: int,
    message: str,
    *,
    details: str | None = None,
    error_subcode: int | None = None,
    error_type: str = "OAuthException",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A Graph API error answer: ``{"error": {message, type, code, error_data, ...}}``."""
    error: dict[str, Any] = {
        "message": message if message.startswith("(#") or code == 190 else f"(#{code}) {message}",
        "type": error_type,
        "code": code,
    }
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if error_subcode is not None:
        error["error_subcode"] = error_subcode
    error["fbtrace_id"] = fbtrace_id()
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def error_from_spec(spec: dict[str, Any]) -> JSONResponse:
    kind = spec.get("kind")
    if kind in ERROR_PRESETS:
        status, code, title, details, subcode = ERROR_PRESETS[str(kind)]
    else:
        # A custom error (e.g. {"status": 403, "code": 200, "message": "Permissions error"}).
        status, code, title, subcode = 400, 100, "Invalid parameter", None
        title = str(spec.get("message", title))
        details = title
    headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
    return graph_error(
        int(spec.get("status", status)),
        int(spec.get("code", code)),
        str(spec.get("message", title)),
        details=spec.get("details", details),
        error_subcode=spec.get("error_subcode", subcode),
        error_type=str(spec.get("type", "OAuthException")),
        headers=headers or None,
    )


def normalize_error(item: str | int | dict[str, Any]) -> dict[str, Any]:
    """``"rate_limit"`` / ``131047`` / ``{"kind": ..., "status": ..., ...}`` -> a spec dict."""
    if isinstance(item, str):
        if item not in ERROR_PRESETS:
            raise ValueError(f"unknown Meta error preset {item!r}; known: {sorted(ERROR_PRESETS)}")
        return {"kind": item}
    if isinstance(item, int):
        for name, preset in ERROR_PRESETS.items():
            if preset[1] == item:
                return {"kind": name}
        return {"kind": "invalid_parameter", "code": item, "status": 400}
    spec = dict(item)
    if "kind" not in spec and "code" in spec:
        for name, preset in ERROR_PRESETS.items():
            if preset[1] == int(spec["code"]):
                spec["kind"] = name
                break
    return spec


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def text_message_event(
    *,
    phone_number_id: str,
    from_number: str,
    text: str,
    message_id: str | None = None,
    display_phone_number: str = "15550000000",
    waba_id: str = "100000000000000",
    profile_name: str = "Test User",
    timestamp: int | None = None,
    context_message_id: str | None = None,
) -> dict[str, Any]:
    """A ``messages`` webhook payload for one inbound text message, as Meta sends it."""
    message: dict[str, Any] = {
        "from": from_number,
        "id": message_id or new_wamid(),
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    if context_message_id:
        message["context"] = {"from": display_phone_number, "id": context_message_id}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            "contacts": [{"profile": {"name": profile_name}, "wa_id": from_number}],
                            "messages": [message],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def status_event(
    *,
    phone_number_id: str,
    message_id: str,
    recipient_id: str,
    status: str = "delivered",
    display_phone_number: str = "15550000000",
    waba_id: str = "100000000000000",
    timestamp: int | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``messages`` webhook payload for one status update (sent, delivered, read, failed)."""
    entry_status: dict[str, Any] = {
        "id": message_id,
        "status": status,
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "recipient_id": recipient_id,
    }
    if errors:
        entry_status["errors"] = errors
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            "statuses": [entry_status],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


class MetaState(BaseState):
    """Everything the Meta fake records; guarded by ``lock``."""

    def __init__(
        self,
        *,
        access_token: str | None = DEFAULT_ACCESS_TOKEN,
        app_secret: str | None = DEFAULT_APP_SECRET,
        verify_webhooks: bool = False,
        application_callback_url: str = DEFAULT_APP_CALLBACK,
        latency: float = 0.0,
    ) -> None:
        super().__init__(latency)
        self.access_token = access_token
        self.app_secret = app_secret
        self.verify_webhooks = verify_webhooks
        self.application_callback_url = application_callback_url
        self.sent: list[dict[str, Any]] = []
        self.reads: list[dict[str, Any]] = []
        self.phone_overrides: dict[str, dict[str, Any]] = {}
        self.waba_overrides: dict[str, dict[str, Any]] = {}
        self.webhook_history: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []

    def reset(self) -> None:
        with self.lock:
            self.reset_recordings()
            self.sent.clear()
            self.reads.clear()
            self.phone_overrides.clear()
            self.waba_overrides.clear()
            self.webhook_history.clear()
            self.deliveries.clear()

    def config(self) -> dict[str, Any]:
        with self.lock:
            return {
                "access_token": self.access_token,
                "app_secret": self.app_secret,
                "verify_webhooks": self.verify_webhooks,
                "application_callback_url": self.application_callback_url,
                "latency": self.latency,
            }

    def webhooks(self) -> dict[str, Any]:
        with self.lock:
            return {
                "phone_numbers": {k: dict(v) for k, v in self.phone_overrides.items()},
                "wabas": {k: dict(v) for k, v in self.waba_overrides.items()},
                "history": [dict(h) for h in self.webhook_history],
            }


async def _read_params(request: Request) -> dict[str, Any]:
    """Graph API parameters from the query string, a JSON body or a form body."""
    params: dict[str, Any] = {k: v for k, v in request.query_params.items()}
    raw = await request.body()
    if not raw:
        return params
    content_type = request.headers.get("content-type", "")
    if "json" in content_type or raw.lstrip()[:1] in (b"{", b"["):
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        params.update(body)
    else:
        for key, values in parse_qs(raw.decode(), keep_blank_values=True).items():
            params[key] = values[-1]
    return params


def create_app(state: MetaState, fake: FakeMeta | None = None) -> Starlette:
    """The Starlette app of the Meta fake, serving ``state``."""
    stopping = fake.stopping if fake is not None else None

    Handler = Callable[[Request], Awaitable[Response]]

    def api(endpoint: str, handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            version = request.path_params.get("version", "")
            entry: dict[str, Any] = {
                "method": request.method,
                "path": request.url.path,
                "endpoint": endpoint,
                "query": dict(request.query_params),
                "headers": loggable_headers(request.headers),
                "body": None,
                "at": time.time(),
            }
            raw = await request.body()
            try:
                entry["body"] = json.loads(raw) if raw else None
            except ValueError:
                entry["body"] = raw.decode(errors="replace")
            state.count(endpoint, entry)
            response = await _guarded(request, version, endpoint, handler)
            entry["status"] = response.status_code
            return response

        return wrapped

    async def _guarded(request: Request, version: str, endpoint: str, handler: Handler) -> Response:
        if not VERSION_RE.match(version):
            return graph_error(
                400, 2500, f"Unknown path components: /{version}", error_type="OAuthException"
            )
        with state.lock:
            latency = state.latency
            expected = state.access_token
        if latency > 0:
            await _sleep(latency)
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token:
            token = request.query_params.get("access_token", "")
        if not token:
            return graph_error(
                401,
                190,
                "An active access token must be used to query information about the current user.",
            )
        if expected is not None and not hmac.compare_digest(token, expected):
            return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        spec = state.take_error(endpoint)
        if spec is not None:
            if spec.get("delay"):
                await _sleep(float(spec["delay"]))
            if spec.get("kind") == "timeout" and "delay" not in spec:
                await _sleep(30.0)
            return error_from_spec(spec)
        try:
            return await handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            return graph_error(400, 100, "Invalid parameter", details=str(exc))

    async def _sleep(seconds: float) -> None:
        if stopping is not None:
            await sleep_unless_stopping(seconds, stopping)
        else:
            await asyncio.sleep(seconds)

    # -- Graph API ----------------------------------------------------------------------------

    async def messages(request: Request) -> Response:
        phone_number_id = request.path_params["phone_number_id"]
        body = await _read_params(request)
        if body.get("messaging_product") != "whatsapp":
            return graph_error(
                400,
                100,
                "Invalid parameter",
                details="The parameter messaging_product is required and must be 'whatsapp'.",
            )
        if body.get("status") == "read":
            message_id = body.get("message_id")
            if not message_id:
                return graph_error(
                    400, 100, "Invalid parameter", details="The parameter message_id is required."
                )
            record = {
                "phone_number_id": phone_number_id,
                "message_id": message_id,
                "typing_indicator": body.get("typing_indicator"),
                "body": body,
                "at": time.time(),
                "version": request.path_params["version"],
            }
            with state.lock:
                state.reads.append(record)
            return JSONResponse({"success": True})
        to = body.get("to")
        if not to:
            return graph_error(
                400, 100, "Invalid parameter", details="The parameter to is required."
            )
        msg_type = body.get("type", "text")
        text: str | None = None
        if msg_type == "text":
            text_obj = body.get("text")
            if not isinstance(text_obj, dict) or not text_obj.get("body"):
                return graph_error(
                    400,
                    100,
                    "Invalid parameter",
                    details="The parameter text['body'] is required.",
                )
            text = str(text_obj["body"])
            if len(text) > 4096:
                return graph_error(
                    400,
                    100,
                    "Invalid parameter",
                    details="Param text['body'] must be at most 4096 characters long.",
                )
        elif msg_type not in body:
            return graph_error(
                400,
                100,
                "Invalid parameter",
                details=f"The parameter {msg_type} is required.",
            )
        wamid = new_wamid()
        context = body.get("context") if isinstance(body.get("context"), dict) else None
        record = {
            "id": wamid,
            "phone_number_id": phone_number_id,
            "to": str(to),
            "type": msg_type,
            "text": text,
            "context_message_id": context.get("message_id") if context else None,
            "recipient_type": body.get("recipient_type", "individual"),
            "body": body,
            "at": time.time(),
            "version": request.path_params["version"],
        }
        with state.lock:
            state.sent.append(record)
        wa_id = re.sub(r"\D", "", str(to))
        result: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": str(to), "wa_id": wa_id}],
            "messages": [{"id": wamid}],
        }
        if msg_type == "template":
            result["messages"][0]["message_status"] = "accepted"
        return JSONResponse(result)

    async def verify_callback(uri: str, verify_token: str) -> str | None:
        """Meta's verification GET against a new callback; returns an error text or None."""
        challenge = str(secrets.randbelow(10**9))
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(
                    uri,
                    params={
                        "hub.mode": "subscribe",
                        "hub.challenge": challenge,
                        "hub.verify_token": verify_token,
                    },
                )
        except httpx.HTTPError as exc:
            return f"Callback verification failed: {exc}"
        if response.status_code != 200 or response.text.strip() != challenge:
            return (
                "Callback verification failed with the following errors: "
                f"HTTP Status Code = {response.status_code}; HTTP Message = {response.text[:200]}"
            )
        return None

    async def set_override(
        kind: str, target: str, config: dict[str, Any], version: str
    ) -> Response:
        uri = config.get("override_callback_uri")
        if uri is None:
            return graph_error(
                400,
                100,
                "Invalid parameter",
                details="The parameter override_callback_uri is required.",
            )
        uri = str(uri)
        token = config.get("verify_token")
        store = state.phone_overrides if kind == "phone_number" else state.waba_overrides
        if uri == "":
            with state.lock:
                store.pop(target, None)
                state.webhook_history.append(
                    {
                        "kind": kind,
                        "target": target,
                        "action": "removed",
                        "override_callback_uri": None,
                        "verify_token": None,
                        "at": time.time(),
                        "version": version,
                    }
                )
            return JSONResponse({"success": True})
        if len(uri) > 200 or not re.match(r"^https?://", uri):
            return graph_error(
                400,
                100,
                "Invalid parameter",
                details="override_callback_uri must be an http(s) URL of at most 200 characters.",
            )
        if token is None:
            return graph_error(
                400, 100, "Invalid parameter", details="The parameter verify_token is required."
            )
        with state.lock:
            verify = state.verify_webhooks
        if verify:
            problem = await verify_callback(uri, str(token))
            if problem is not None:
                return graph_error(400, 2200, problem)
        with state.lock:
            store[target] = {"override_callback_uri": uri, "verify_token": str(token)}
            state.webhook_history.append(
                {
                    "kind": kind,
                    "target": target,
                    "action": "set",
                    "override_callback_uri": uri,
                    "verify_token": str(token),
                    "at": time.time(),
                    "version": version,
                }
            )
        return JSONResponse({"success": True})

    async def phone_number_post(request: Request) -> Response:
        phone_number_id = request.path_params["phone_number_id"]
        params = await _read_params(request)
        config = params.get("webhook_configuration")
        if config is None:
            # Other phone-number updates are accepted and ignored.
            return JSONResponse({"success": True})
        if isinstance(config, str):
            config = json.loads(config)
        if not isinstance(config, dict):
            raise ValueError("webhook_configuration must be an object")
        return await set_override(
            "phone_number", phone_number_id, config, request.path_params["version"]
        )

    async def phone_number_get(request: Request) -> Response:
        phone_number_id = request.path_params["phone_number_id"]
        fields = [f.strip() for f in request.query_params.get("fields", "").split(",") if f]
        result: dict[str, Any] = {}
        with state.lock:
            phone = state.phone_overrides.get(phone_number_id)
            app_url = state.application_callback_url
        if not fields:
            fields = ["verified_name", "display_phone_number", "quality_rating"]
        for field in fields:
            if field == "webhook_configuration":
                config: dict[str, Any] = {}
                if phone:
                    config["phone_number"] = phone["override_callback_uri"]
                config["application"] = app_url
                result["webhook_configuration"] = config
            elif field == "display_phone_number":
                result[field] = "+1 555-000-0000"
            elif field == "verified_name":
                result[field] = "Released Test"
            elif field == "quality_rating":
                result[field] = "GREEN"
        result["id"] = phone_number_id
        return JSONResponse(result)

    async def subscribed_apps_post(request: Request) -> Response:
        waba_id = request.path_params["phone_number_id"]
        params = await _read_params(request)
        if "override_callback_uri" not in params:
            # Subscribing without an override (or removing it): POST without the fields.
            with state.lock:
                removed = state.waba_overrides.pop(waba_id, None)
                if removed is not None:
                    state.webhook_history.append(
                        {
                            "kind": "waba",
                            "target": waba_id,
                            "action": "removed",
                            "override_callback_uri": None,
                            "verify_token": None,
                            "at": time.time(),
                            "version": request.path_params["version"],
                        }
                    )
            return JSONResponse({"success": True})
        return await set_override("waba", waba_id, params, request.path_params["version"])

    async def subscribed_apps_get(request: Request) -> Response:
        waba_id = request.path_params["phone_number_id"]
        with state.lock:
            override = state.waba_overrides.get(waba_id)
        app: dict[str, Any] = {
            "whatsapp_business_api_data": {
                "id": "1000000000",
                "link": "https://www.facebook.com/games/?app_id=1000000000",
                "name": "Released Fake App",
            }
        }
        if override:
            app["override_callback_uri"] = override["override_callback_uri"]
        return JSONResponse({"data": [app]})

    # -- control ------------------------------------------------------------------------------

    async def c_sent(request: Request) -> Response:
        to = request.query_params.get("to")
        with state.lock:
            items = [dict(s) for s in state.sent if to is None or s["to"] == to]
        return JSONResponse(items)

    async def c_reads(request: Request) -> Response:
        with state.lock:
            return JSONResponse([dict(r) for r in state.reads])

    async def c_webhooks(request: Request) -> Response:
        return JSONResponse(state.webhooks())

    async def c_errors(request: Request) -> Response:
        if request.method == "GET":
            with state.lock:
                return JSONResponse([dict(e) for e in state.errors])
        body = await request.json()
        items = body.get("errors", []) if isinstance(body, dict) else body
        try:
            specs = [normalize_error(i) for i in items]
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        with state.lock:
            if isinstance(body, dict) and body.get("replace"):
                state.errors.clear()
            state.errors.extend(specs)
            return JSONResponse({"pending": len(state.errors)})

    async def c_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def c_config(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            allowed = set(state.config())
            unknown = set(body) - allowed
            if unknown:
                return JSONResponse({"detail": f"unknown settings {sorted(unknown)}"}, 400)
            with state.lock:
                for key, value in body.items():
                    setattr(state, key, value)
        return JSONResponse(state.config())

    async def c_latency(request: Request) -> Response:
        body = await request.json()
        with state.lock:
            state.latency = float(body.get("seconds", 0.0))
        return JSONResponse({"latency": state.latency})

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

    async def c_deliver(request: Request) -> Response:
        body = await request.json()
        payload = body.get("payload")
        phone_number_id = body.get("phone_number_id")
        if payload is None:
            if "text" not in body or not phone_number_id:
                return JSONResponse(
                    {"detail": "give payload, or phone_number_id + from + text"}, 400
                )
            payload = text_message_event(
                phone_number_id=str(phone_number_id),
                from_number=str(body.get("from", "15551234567")),
                text=str(body["text"]),
                message_id=body.get("message_id"),
                profile_name=str(body.get("profile_name", "Test User")),
                context_message_id=body.get("context_message_id"),
            )
        if not phone_number_id:
            try:
                change = payload["entry"][0]["changes"][0]["value"]
                phone_number_id = change["metadata"]["phone_number_id"]
            except (KeyError, IndexError, TypeError):
                phone_number_id = None
        url = body.get("url")
        with state.lock:
            if url is None and phone_number_id in state.phone_overrides:
                url = state.phone_overrides[phone_number_id]["override_callback_uri"]
            secret = body.get("app_secret", state.app_secret)
        if not url:
            return JSONResponse(
                {"detail": "no url given and no callback override for this phone number"}, 400
            )
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-Hub-Signature-256"] = sign(raw, str(secret))
        try:
            async with httpx.AsyncClient(timeout=float(body.get("timeout", 10.0))) as client:
                response = await client.post(url, content=raw, headers=headers)
            result = {
                "url": url,
                "status": response.status_code,
                "response": response.text[:2000],
                "payload": payload,
            }
        except httpx.HTTPError as exc:
            result = {"url": url, "status": None, "response": str(exc), "payload": payload}
        with state.lock:
            state.deliveries.append(result)
        return JSONResponse(result)

    routes = [
        Route("/_fake/sent", c_sent, methods=["GET"]),
        Route("/_fake/reads", c_reads, methods=["GET"]),
        Route("/_fake/webhooks", c_webhooks, methods=["GET"]),
        Route("/_fake/errors", c_errors, methods=["GET", "POST"]),
        Route("/_fake/reset", c_reset, methods=["POST"]),
        Route("/_fake/config", c_config, methods=["GET", "POST"]),
        Route("/_fake/latency", c_latency, methods=["POST"]),
        Route("/_fake/calls", c_calls, methods=["GET"]),
        Route("/_fake/requests", c_requests, methods=["GET"]),
        Route("/_fake/deliver", c_deliver, methods=["POST"]),
        Route(
            "/{version}/{phone_number_id}/messages",
            api("POST /{version}/{phone_number_id}/messages", messages),
            methods=["POST"],
        ),
        Route(
            "/{version}/{phone_number_id}/subscribed_apps",
            api("POST /{version}/{waba_id}/subscribed_apps", subscribed_apps_post),
            methods=["POST"],
        ),
        Route(
            "/{version}/{phone_number_id}/subscribed_apps",
            api("GET /{version}/{waba_id}/subscribed_apps", subscribed_apps_get),
            methods=["GET"],
        ),
        Route(
            "/{version}/{phone_number_id}",
            api("POST /{version}/{phone_number_id}", phone_number_post),
            methods=["POST"],
        ),
        Route(
            "/{version}/{phone_number_id}",
            api("GET /{version}/{phone_number_id}", phone_number_get),
            methods=["GET"],
        ),
    ]
    return Starlette(routes=routes)


class FakeMeta(FakeServer):
    """The Meta Graph API fake. ``FakeMeta().start()`` (thread) or ``FakeMeta.spawn()``
    (child process); both are context managers and share this control API.

    ``access_token``: the Bearer token to accept (None: any non-empty token).
    ``app_secret``: used by :meth:`deliver_text` to sign webhooks like Meta does.
    ``verify_webhooks``: perform Meta's ``hub.challenge`` GET when a callback is registered.
    """

    module: ClassVar[str] = "released.fakes.meta"
    name: ClassVar[str] = "fake-meta"

    def __init__(
        self,
        access_token: str | None = DEFAULT_ACCESS_TOKEN,
        *,
        app_secret: str | None = DEFAULT_APP_SECRET,
        verify_webhooks: bool = False,
        version: str = DEFAULT_VERSION,
        application_callback_url: str = DEFAULT_APP_CALLBACK,
        latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.version = version
        self.state = MetaState(
            access_token=access_token,
            app_secret=app_secret,
            verify_webhooks=verify_webhooks,
            application_callback_url=application_callback_url,
            latency=latency,
        )

    @property
    def path_prefix(self) -> str:
        return "/" + self.version

    def build_app(self) -> Starlette:
        return create_app(self.state, self)

    def cli_args(self) -> list[str]:
        state = self.state
        args = ["--version", self.version, "--latency", str(state.latency)]
        args += ["--application-callback-url", state.application_callback_url]
        if state.access_token is None:
            args.append("--any-token")
        else:
            args += ["--access-token", state.access_token]
        if state.app_secret is not None:
            args += ["--app-secret", state.app_secret]
        if state.verify_webhooks:
            args.append("--verify-webhooks")
        return args

    # -- control API (HTTP, so it works for thread, child process and attach()) ---------------

    def sent(self, to: str | None = None) -> list[dict[str, Any]]:
        """Messages sent through the API, oldest first. Each: ``id`` (wamid), ``phone_number_id``,
        ``to``, ``type``, ``text`` (body for text messages, else None), ``context_message_id``,
        ``recipient_type``, ``body`` (the full request JSON), ``at``, ``version``."""
        result: list[dict[str, Any]] = self._get("/sent", to=to)
        return result

    def sent_texts(self, to: str | None = None) -> list[str]:
        return [s["text"] for s in self.sent(to) if s["text"] is not None]

    def reads(self) -> list[dict[str, Any]]:
        """Mark-as-read calls: ``phone_number_id``, ``message_id``, ``typing_indicator``,
        ``body``, ``at``, ``version``."""
        result: list[dict[str, Any]] = self._get("/reads")
        return result

    def webhooks(self) -> dict[str, Any]:
        """``{"phone_numbers": {id: {override_callback_uri, verify_token}}, "wabas": {...},
        "history": [{kind, target, action: set|removed, override_callback_uri, ...}]}``."""
        result: dict[str, Any] = self._get("/webhooks")
        return result

    def webhook_override(self, phone_number_id: str) -> str | None:
        """The callback override currently set for a phone number, or None."""
        entry = self.webhooks()["phone_numbers"].get(phone_number_id)
        return None if entry is None else str(entry["override_callback_uri"])

    def script_errors(self, errors: Sequence[str | int | dict[str, Any]]) -> None:
        """Queue error answers for the next API calls, one per call, in order.

        Items: a preset name (``"rate_limit"`` 429/130429, ``"pair_rate_limit"`` 429/131056,
        ``"re_engagement"`` 400/131047, ``"undeliverable"`` 400/131026, ``"auth"`` 401/190,
        ``"server_error"`` 500/1, ``"unavailable"`` 503/2, ``"invalid_parameter"`` 400/100,
        ``"timeout"`` sleeps 30 s then 504), a Meta error code (int), or a dict with any of
        ``kind``, ``status``, ``code``, ``message``, ``details``, ``error_subcode``, ``type``,
        ``headers``, ``delay`` (seconds before answering), ``times`` (repeat count),
        ``endpoint`` (only calls whose endpoint key contains it, e.g. ``"messages"``).
        """
        self._post("/errors", {"errors": list(errors)})

    def deliver(
        self,
        payload: dict[str, Any],
        url: str | None = None,
        *,
        app_secret: str | None = None,
    ) -> dict[str, Any]:
        """POST a webhook ``payload`` signed with the app secret to ``url`` (default: the
        phone number's callback override). Returns ``{url, status, response, payload}``."""
        body: dict[str, Any] = {"payload": payload, "url": url}
        if app_secret is not None:
            body["app_secret"] = app_secret
        result: dict[str, Any] = self._post("/deliver", body)
        return result

    def deliver_text(
        self,
        phone_number_id: str,
        text: str,
        *,
        from_number: str = "15551234567",
        url: str | None = None,
        message_id: str | None = None,
        app_secret: str | None = None,
        profile_name: str = "Test User",
    ) -> dict[str, Any]:
        """Simulate a user's inbound text: build Meta's webhook and deliver it signed."""
        payload = text_message_event(
            phone_number_id=phone_number_id,
            from_number=from_number,
            text=text,
            message_id=message_id,
            profile_name=profile_name,
        )
        return self.deliver(payload, url, app_secret=app_secret)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--access-token", default="test-meta-token")
    parser.add_argument("--any-token", action="store_true", help="accept any Bearer token")
    parser.add_argument("--app-secret", default="test-app-secret")
    parser.add_argument("--verify-webhooks", action="store_true")
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--application-callback-url", default=DEFAULT_APP_CALLBACK)
    parser.add_argument("--latency", type=float, default=0.0)


def _factory(args: argparse.Namespace) -> FakeServer:
    return FakeMeta(
        None if args.any_token else args.access_token,
        app_secret=args.app_secret,
        verify_webhooks=args.verify_webhooks,
        version=args.version,
        application_callback_url=args.application_callback_url,
        latency=args.latency,
    )


def main(argv: Sequence[str] | None = None) -> None:
    serve_cli("meta", _factory, _add_arguments, argv)


if __name__ == "__main__":
    main()
