"""A fake of Meta's WhatsApp Cloud API (Graph API) for tests and local demos.

Base URL: ``http://127.0.0.1:PORT/v25.0``. It refuses what the real Graph API refuses: every
request on the endpoints below is checked against Meta's published OpenAPI document (the
schemas extracted into ``released/fakes/contracts/``) and the changes Meta made since
(``../shared/contracts/README.md``: BSUIDs, Graph versions, webhook routing and subscription),
and a refused request gets Meta's error envelope and HTTP status. See ``README.md`` here.

API routes (Bearer token required, like the Graph API):

- ``POST /{version}/{phone_number_id}/messages``: send a message (recorded in ``sent``), or mark
  one as read (``{"status": "read", "message_id": ...}``, recorded in ``reads``). Addressed by
  ``to`` (a phone number) or, from v25.0, ``recipient`` (a BSUID).
- ``POST /{version}/{phone_number_id}``: update the phone number; ``webhook_configuration``
  sets the callback override (only while the app is subscribed to the number's WABA), an empty
  ``override_callback_uri`` removes it.
- ``GET /{version}/{phone_number_id}`` (``fields=webhook_configuration`` and the defaults).
- ``GET|POST|DELETE /{version}/{waba_id}/subscribed_apps``: the app's subscription to the WABA
  and the WABA-level override; a body-less POST subscribes and removes that override.

Control routes (no auth), all JSON, under ``/_fake/``: ``sent``, ``reads``, ``webhooks``,
``errors``, ``reset``, ``config``, ``latency``, ``calls``, ``requests``, ``deliver``,
``deliveries``, ``clock``, ``token``, ``users``, ``wabas``, ``phone_numbers``.

Run alone: ``python -m released.fakes.meta --port 8081 [--access-token T] [--app-secret S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from released.fakes import contracts
from released.fakes._base import (
    BaseState,
    FakeServer,
    When,
    clock_route,
    iso,
    loggable_headers,
    parse_when,
    serve_cli,
    sleep_unless_stopping,
)
from released.fakes.webhooks import (
    DEFAULT_DISPLAY_PHONE_NUMBER,
    DEFAULT_WABA_ID,
    WhatsAppUser,
    new_wamid,
    status_event,
    text_message_event,
    user_changed_number_event,
    user_changed_user_id_event,
)

__all__ = [
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_APP_SECRET",
    "DEFAULT_VERSION",
    "DEFAULT_WABA_ID",
    "GRAPH_VERSIONS",
    "FakeMeta",
    "WhatsAppUser",
    "graph_error",
    "sign",
    "status_event",
    "text_message_event",
]

#: The version the fake's ``url`` carries (and the bot's and operator's default).
DEFAULT_VERSION = "v25.0"
DEFAULT_ACCESS_TOKEN = "test-meta-token"
#: Shaped like Meta's (32 hexadecimal characters): the bot and the operator refuse anything else.
DEFAULT_APP_SECRET = "7e57a0905ec7e7000000000000000abc"
DEFAULT_APP_ID = "1000000000"
#: The app-level callback of the fake's Meta app; ``.invalid`` never resolves, so nothing is
#: delivered there unless a test configures a real one (``application_callback_url``).
DEFAULT_APP_CALLBACK = "https://app-callback.example.invalid/webhook"


def _day(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


#: Graph API versions: (available from, available until) as epoch seconds, None = open.
#: README "Graph API versions": "v26.0 is the latest (2026-07-29). v25.0 is supported until
#: 2028-07-29, v23.0 only until 2027-10-08." v24.0's end is not published there, so it stays
#: open; versions before v23.0 are past their two-year lifetime and refused.
GRAPH_VERSIONS: dict[str, tuple[float | None, float | None]] = {
    "v23.0": (None, _day("2027-10-08")),
    "v24.0": (None, None),
    "v25.0": (None, _day("2028-07-29")),
    "v26.0": (_day("2026-07-29"), None),
}
#: README: "Sending by recipient works on current Graph versions (v25.0 and later); older
#: versions may ignore it."
RECIPIENT_SINCE = (25, 0)
VERSION_RE = re.compile(r"^v(\d+)\.(\d+)$")

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
    "unsupported_type": (
        400,
        131051,
        "Unsupported message type",
        "Message type is not currently supported.",
        None,
    ),
    "auth": (
        401,
        190,
        "Invalid OAuth access token - Cannot parse access token",
        "",
        None,
    ),
    "permission": (
        403,
        200,
        "Permissions error",
        "The app does not have the whatsapp_business_messaging permission for this number.",
        None,
    ),
    "access_denied": (403, 10, "Application does not have permission for this action", "", None),
    "policy_block": (
        400,
        368,
        "Temporarily blocked for policies violations",
        "The account is blocked for a while because it violated WhatsApp's policies.",
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


def graph_error(
    status: int,
    code: int,
    message: str,
    *,
    details: str | None = None,
    error_subcode: int | None = None,
    error_type: str = "OAuthException",
    headers: dict[str, str] | None = None,
    user_title: str | None = None,
    user_msg: str | None = None,
) -> JSONResponse:
    """A Graph API error answer: ``{"error": {message, type, code, error_subcode?,
    error_data?, fbtrace_id}}`` (Meta's ``GraphAPIError`` schema)."""
    error: dict[str, Any] = {
        "message": message if message.startswith("(#") or code == 190 else f"(#{code}) {message}",
        "type": error_type,
        "code": code,
    }
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if error_subcode is not None:
        error["error_subcode"] = error_subcode
    if user_title:
        error["error_user_title"] = user_title
    if user_msg:
        error["error_user_msg"] = user_msg
    error["fbtrace_id"] = fbtrace_id()
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def invalid_parameter(details: str, *, subcode: int | None = None) -> JSONResponse:
    """Meta's answer to a request its schema refuses: 400, code 100."""
    return graph_error(400, 100, "Invalid parameter", details=details, error_subcode=subcode)


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


def version_problem(version: str, at: float) -> JSONResponse | None:
    """Meta's refusal of a Graph API version at time ``at``, or None when it is served."""
    match = VERSION_RE.match(version)
    if match is None or (version not in GRAPH_VERSIONS and _version_tuple(version) > (26, 0)):
        # Not a version at all, or one Meta has not released: the path is not understood.
        return graph_error(400, 2500, f"Unknown path components: /{version}")
    start, until = GRAPH_VERSIONS.get(version, (None, 0.0))
    if start is not None and at < start:
        return graph_error(400, 2500, f"Unknown path components: /{version}")
    if until is not None and at >= until:
        latest = max(
            (v for v, (s, u) in GRAPH_VERSIONS.items() if (s is None or s <= at)),
            key=_version_tuple,
        )
        return graph_error(
            400,
            2635,
            f"(#2635) You are calling a deprecated version of the Graph API ({version}). "
            f"Please update to the latest version: {latest}.",
        )
    return None


def _version_tuple(version: str) -> tuple[int, int]:
    match = VERSION_RE.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class MetaState(BaseState):
    """Everything the Meta fake knows and records; guarded by ``lock``."""

    def __init__(
        self,
        *,
        access_token: str | None = DEFAULT_ACCESS_TOKEN,
        app_secret: str | None = DEFAULT_APP_SECRET,
        verify_webhooks: bool = False,
        application_callback_url: str | None = DEFAULT_APP_CALLBACK,
        latency: float = 0.0,
        waba_id: str = DEFAULT_WABA_ID,
        waba_subscribed: bool = False,
        status_webhooks: Sequence[str] = ("sent", "delivered"),
        status_delay: float = 0.05,
        service_window_hours: float = 24.0,
    ) -> None:
        super().__init__(latency)
        self.access_token = access_token
        self.app_secret = app_secret
        self.verify_webhooks = verify_webhooks
        self.application_callback_url = application_callback_url
        self.default_waba_id = waba_id
        self.waba_subscribed = waba_subscribed
        self.status_webhooks = list(status_webhooks)
        self.status_delay = status_delay
        self.service_window_hours = service_window_hours
        self.messages_per_second: int | None = None
        self.sent: list[dict[str, Any]] = []
        self.reads: list[dict[str, Any]] = []
        self.phone_overrides: dict[str, dict[str, Any]] = {}
        self.waba_overrides: dict[str, dict[str, Any]] = {}
        self.subscribed: dict[str, bool] = {}
        self.phone_numbers: dict[str, dict[str, Any]] = {}
        self.users: dict[str, WhatsAppUser] = {}  # by BSUID
        self.last_inbound: dict[str, float] = {}  # BSUID -> clock time of the last message
        self.token_state: dict[str, Any] = {"state": "valid", "expires_at": None}
        self.webhook_history: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []

    def reset(self) -> None:
        with self.lock:
            self.reset_recordings()
            self.sent.clear()
            self.reads.clear()
            self.phone_overrides.clear()
            self.waba_overrides.clear()
            self.subscribed.clear()
            self.phone_numbers.clear()
            self.users.clear()
            self.last_inbound.clear()
            self.token_state = {"state": "valid", "expires_at": None}
            self.webhook_history.clear()
            self.deliveries.clear()
            self.clock.real()

    def config(self) -> dict[str, Any]:
        with self.lock:
            return {
                "access_token": self.access_token,
                "app_secret": self.app_secret,
                "verify_webhooks": self.verify_webhooks,
                "application_callback_url": self.application_callback_url,
                "latency": self.latency,
                "waba_subscribed": self.waba_subscribed,
                "status_webhooks": list(self.status_webhooks),
                "status_delay": self.status_delay,
                "service_window_hours": self.service_window_hours,
                "messages_per_second": self.messages_per_second,
            }

    # -- phone numbers, WABAs and users (call with the lock held) -------------------------------

    def phone_number(self, phone_number_id: str) -> dict[str, Any]:
        """The phone number's record; an unknown one joins the default WABA."""
        record = self.phone_numbers.get(phone_number_id)
        if record is None:
            record = {
                "id": phone_number_id,
                "waba_id": self.default_waba_id,
                "display_phone_number": DEFAULT_DISPLAY_PHONE_NUMBER,
                "verified_name": "Released Test",
                "quality_rating": "GREEN",
            }
            self.phone_numbers[phone_number_id] = record
        self.waba(record["waba_id"])
        return record

    def waba(self, waba_id: str) -> bool:
        """Whether the app is subscribed to ``waba_id`` (a new WABA starts as configured)."""
        if waba_id not in self.subscribed:
            self.subscribed[waba_id] = self.waba_subscribed
        return self.subscribed[waba_id]

    def remember(self, user: WhatsAppUser) -> WhatsAppUser:
        known = self.users.get(user.user_id)
        if known is not None and user.phone is None and known.phone:
            return known
        self.users[user.user_id] = user
        return user

    def user_by_phone(self, phone: str) -> WhatsAppUser | None:
        digits = re.sub(r"\D", "", phone)
        for user in self.users.values():
            if user.phone == digits:
                return user
        return None

    def callback_for(self, phone_number_id: str) -> tuple[str | None, str]:
        """Where Meta would deliver this number's webhooks, and why (phone number -> WABA ->
        app; nothing while the app is not subscribed to the WABA)."""
        record = self.phone_number(phone_number_id)
        waba_id = record["waba_id"]
        if not self.waba(waba_id):
            return None, f"the app is not subscribed to WABA {waba_id}"
        if phone_number_id in self.phone_overrides:
            return self.phone_overrides[phone_number_id]["override_callback_uri"], "phone_number"
        if waba_id in self.waba_overrides:
            waba_url = self.waba_overrides[waba_id]["override_callback_uri"]
            return waba_url, "whatsapp_business_account"
        if self.application_callback_url:
            return self.application_callback_url, "application"
        return None, "no callback URL configured for the app"

    def webhooks(self) -> dict[str, Any]:
        with self.lock:
            return {
                "phone_numbers": {k: dict(v) for k, v in self.phone_overrides.items()},
                "wabas": {k: dict(v) for k, v in self.waba_overrides.items()},
                "subscribed": dict(self.subscribed),
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
            value: Any = values[-1]
            # Graph decodes JSON-valued form fields (e.g. webhook_configuration).
            if isinstance(value, str) and value[:1] in ("{", "["):
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            params[key] = value
    params.pop("access_token", None)
    return params


Handler = Callable[[Request], Awaitable[Response]]


def create_app(state: MetaState, fake: FakeMeta | None = None) -> Starlette:
    """The Starlette app of the Meta fake, serving ``state``."""
    stopping = fake.stopping if fake is not None else None
    background: set[asyncio.Task[None]] = set()

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
                "at": state.clock.now(),
            }
            raw = await request.body()
            try:
                entry["body"] = json.loads(raw) if raw else None
            except ValueError:
                entry["body"] = raw.decode(errors="replace")
            state.count(endpoint, entry)
            response = await _guarded(request, version, endpoint, handler)
            entry["status"] = response.status_code
            if response.status_code >= 400:
                entry["error"] = json.loads(bytes(response.body)).get("error")
            return response

        return wrapped

    def token_problem(token: str) -> JSONResponse | None:
        with state.lock:
            expected = state.access_token
            token_state = dict(state.token_state)
        if not token:
            return graph_error(
                401,
                190,
                "An active access token must be used to query information about the current user.",
            )
        if expected is not None and not hmac.compare_digest(token, expected):
            return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        now = state.clock.now()
        expires_at = token_state.get("expires_at")
        if token_state["state"] == "expired" or (expires_at is not None and now >= expires_at):
            when = expires_at if expires_at is not None else now
            return graph_error(
                401,
                190,
                "Error validating access token: Session has expired on "
                f"{datetime.fromtimestamp(when, UTC):%A, %d-%b-%y %H:%M:%S} UTC. The current time "
                f"is {datetime.fromtimestamp(now, UTC):%A, %d-%b-%y %H:%M:%S} UTC.",
                error_subcode=463,
            )
        if token_state["state"] == "revoked":
            return graph_error(
                401,
                190,
                "Error validating access token: The session has been invalidated because the "
                "user changed their password or Facebook has changed the session for security "
                "reasons.",
                error_subcode=460,
            )
        return None

    async def _guarded(request: Request, version: str, endpoint: str, handler: Handler) -> Response:
        problem = version_problem(version, state.clock.now())
        if problem is not None:
            return problem
        with state.lock:
            latency = state.latency
        if latency > 0:
            await _sleep(latency)
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token:
            token = request.query_params.get("access_token", "")
        problem = token_problem(token)
        if problem is not None:
            return problem
        spec = state.take_error(endpoint)
        if spec is not None:
            if spec.get("delay"):
                await _sleep(float(spec["delay"]))
            if spec.get("kind") == "timeout" and "delay" not in spec:
                await _sleep(30.0)
            return error_from_spec(spec)
        for name, value in request.path_params.items():
            if name != "version" and not str(value).isdigit():
                # Meta: an object id that is not a number is not an object it knows.
                return graph_error(
                    400,
                    100,
                    f"Unsupported {request.method.lower()} request. Object with ID '{value}' "
                    "does not exist, cannot be loaded due to missing permissions, or does not "
                    "support this operation.",
                    error_subcode=33,
                    error_type="GraphMethodException",
                )
        try:
            return await handler(request)
        except (ValueError, KeyError, TypeError) as exc:
            return invalid_parameter(str(exc))

    async def _sleep(seconds: float) -> None:
        if stopping is not None:
            await sleep_unless_stopping(seconds, stopping)
        else:
            await asyncio.sleep(seconds)

    # -- outgoing webhooks ----------------------------------------------------------------------

    async def post_webhook(
        payload: dict[str, Any], url: str | None, secret: str | None, *, kind: str,
        wait: float = 10.0, reason: str = "",
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"url": url, "kind": kind, "payload": payload,
                                  "at": state.clock.now()}
        if not url:
            record.update(status=None, delivered=False, response=reason or "no callback URL")
        else:
            raw = json.dumps(payload, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"}
            if secret:
                headers["X-Hub-Signature-256"] = sign(raw, str(secret))
            try:
                async with httpx.AsyncClient(timeout=wait) as client:
                    response = await client.post(url, content=raw, headers=headers)
                record.update(status=response.status_code, delivered=response.is_success,
                              response=response.text[:2000])
            except httpx.HTTPError as exc:
                record.update(status=None, delivered=False, response=str(exc) or repr(exc))
        with state.lock:
            state.deliveries.append(record)
        return record

    def schedule_statuses(phone_number_id: str, wamid: str, user: WhatsAppUser) -> None:
        with state.lock:
            kinds = list(state.status_webhooks)
            delay = state.status_delay
            secret = state.app_secret
            record = state.phone_number(phone_number_id)
        if not kinds:
            return

        async def run() -> None:
            for kind in kinds:
                await _sleep(delay)
                if stopping is not None and stopping.is_set():
                    return
                with state.lock:
                    url, reason = state.callback_for(phone_number_id)
                payload = status_event(
                    phone_number_id=phone_number_id,
                    message_id=wamid,
                    user=user,
                    status=kind,
                    display_phone_number=record["display_phone_number"],
                    waba_id=record["waba_id"],
                    timestamp=int(state.clock.now()),
                )
                await post_webhook(payload, url, secret, kind="status", reason=reason)

        task = asyncio.get_running_loop().create_task(run())
        background.add(task)
        task.add_done_callback(background.discard)

    # -- Graph API ----------------------------------------------------------------------------

    async def messages(request: Request) -> Response:
        phone_number_id = request.path_params["phone_number_id"]
        version = request.path_params["version"]
        body = await _read_params(request)
        problem = contracts.check_meta_message(body, version)
        if problem is not None:
            return invalid_parameter(str(problem))
        if body.get("status") != "read":
            with state.lock:
                mps = state.messages_per_second
            if state.over_rate(mps, 1.0) is not None:
                # README "Error codes that matter": 130429, the number's throughput is reached.
                return error_from_spec({"kind": "rate_limit"})
        if body.get("status") == "read":
            record = {
                "phone_number_id": phone_number_id,
                "message_id": body["message_id"],
                "typing_indicator": body.get("typing_indicator"),
                "body": body,
                "at": state.clock.now(),
                "version": version,
            }
            with state.lock:
                state.reads.append(record)
            return JSONResponse({"success": True})
        to = body.get("to")
        recipient = body.get("recipient")
        if to:
            # README: "`to` is for phone numbers and wins when both are given".
            with state.lock:
                user = state.user_by_phone(str(to)) or WhatsAppUser(phone=str(to))
        else:
            with state.lock:
                user = state.users.get(str(recipient)) or WhatsAppUser(
                    phone=None, user_id=str(recipient)
                )
        msg_type = body.get("type", "text")
        with state.lock:
            last = state.last_inbound.get(user.user_id)
            window = state.service_window_hours * 3600
        if (
            msg_type != "template"
            and last is not None
            and state.clock.now() - last > window
        ):
            # README "Error codes that matter": 131047, more than 24 h since the user's last
            # message: only a template may be sent. (Known only for users the fake delivered.)
            return error_from_spec({"kind": "re_engagement"})
        text: str | None = None
        if msg_type == "text":
            text = str(body["text"]["body"])
        wamid = new_wamid()
        context = body.get("context") if isinstance(body.get("context"), dict) else None
        record = {
            "id": wamid,
            "phone_number_id": phone_number_id,
            "to": str(to) if to else None,
            "recipient": str(recipient) if recipient and not to else None,
            "user_id": user.user_id,
            "type": msg_type,
            "text": text,
            "context_message_id": context.get("message_id") if context else None,
            "recipient_type": body.get("recipient_type", "individual"),
            "body": body,
            "at": state.clock.now(),
            "version": version,
        }
        with state.lock:
            state.sent.append(record)
            state.remember(user)
        contact: dict[str, Any] = {"input": str(to or recipient)}
        if user.phone:
            contact["wa_id"] = user.phone
        contact["user_id"] = user.user_id
        result: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [{"id": wamid}],
        }
        if msg_type == "template":
            result["messages"][0]["message_status"] = "accepted"
        schedule_statuses(phone_number_id, wamid, user)
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

    def history(kind: str, target: str, action: str, uri: str | None, token: str | None,
                version: str) -> None:
        state.webhook_history.append(
            {
                "kind": kind,
                "target": target,
                "action": action,
                "override_callback_uri": uri,
                "verify_token": token,
                "at": state.clock.now(),
                "version": version,
            }
        )

    async def set_override(
        kind: str, target: str, config: dict[str, Any], version: str
    ) -> Response:
        uri = str(config["override_callback_uri"])
        token = config.get("verify_token")
        store = state.phone_overrides if kind == "phone_number" else state.waba_overrides
        if uri == "":
            with state.lock:
                store.pop(target, None)
                history(kind, target, "removed", None, None, version)
            return JSONResponse({"success": True})
        problem = contracts.check_callback_uri(uri, token)
        if problem is not None:
            return invalid_parameter(str(problem))
        with state.lock:
            verify = state.verify_webhooks
        if verify:
            failure = await verify_callback(uri, str(token))
            if failure is not None:
                return graph_error(400, 2200, failure)
        with state.lock:
            store[target] = {"override_callback_uri": uri, "verify_token": str(token)}
            history(kind, target, "set", uri, str(token), version)
        return JSONResponse({"success": True})

    async def phone_number_post(request: Request) -> Response:
        phone_number_id = request.path_params["phone_number_id"]
        version = request.path_params["version"]
        params = await _read_params(request)
        problem = contracts.check_request("meta", "POST /{Version}/{Phone-Number-ID}", params)
        if problem is not None:
            return invalid_parameter(str(problem))
        config = params.get("webhook_configuration")
        if config is None:
            # Other phone-number updates are accepted and ignored.
            return JSONResponse({"success": True})
        with state.lock:
            waba_id = state.phone_number(phone_number_id)["waba_id"]
            subscribed = state.waba(waba_id)
        if config.get("override_callback_uri") and not subscribed:
            # README "Webhook routing and subscription": the app must be subscribed to the
            # WABA (POST /{WABA_ID}/subscribed_apps) or no message arrives; Meta refuses an
            # override for a number whose WABA the app is not subscribed to.
            return graph_error(
                400,
                100,
                "Invalid parameter",
                details=(
                    f"The app is not subscribed to the WhatsApp Business Account {waba_id} of "
                    f"phone number {phone_number_id}. Subscribe it with POST "
                    f"/{waba_id}/subscribed_apps before setting a webhook override."
                ),
                user_title="App not subscribed",
                user_msg="Subscribe your app to the WhatsApp Business Account first.",
            )
        return await set_override("phone_number", phone_number_id, config, version)

    async def phone_number_get(request: Request) -> Response:
        phone_number_id = request.path_params["phone_number_id"]
        fields = [f.strip() for f in request.query_params.get("fields", "").split(",") if f]
        result: dict[str, Any] = {}
        with state.lock:
            record = dict(state.phone_number(phone_number_id))
            phone = state.phone_overrides.get(phone_number_id)
            waba = state.waba_overrides.get(record["waba_id"])
            app_url = state.application_callback_url
        if not fields:
            fields = ["verified_name", "display_phone_number", "quality_rating"]
        for field in fields:
            if field == "webhook_configuration":
                config: dict[str, Any] = {}
                if phone:
                    config["phone_number"] = phone["override_callback_uri"]
                if waba:
                    config["whatsapp_business_account"] = waba["override_callback_uri"]
                if app_url:
                    config["application"] = app_url
                result["webhook_configuration"] = config
            elif field == "display_phone_number":
                digits = record["display_phone_number"]
                result[field] = f"+{digits[:1]} {digits[1:4]}-{digits[4:7]}-{digits[7:]}"
            elif field in ("verified_name", "quality_rating"):
                result[field] = record[field]
            elif field == "name_status":
                result[field] = "APPROVED"
            elif field == "code_verification_status":
                result[field] = "VERIFIED"
            elif field in ("platform_type", "throughput", "status"):
                result[field] = {"platform_type": "CLOUD_API", "throughput": {"level": "STANDARD"},
                                 "status": "CONNECTED"}[field]
            else:
                return graph_error(
                    400, 100, f"(#100) Tried accessing nonexisting field ({field}) on node type "
                    "(WhatsAppBusinessPhoneNumber)"
                )
        result["id"] = phone_number_id
        return JSONResponse(result)

    def subscribed_apps_body(waba_id: str) -> dict[str, Any]:
        with state.lock:
            subscribed = state.waba(waba_id)
            override = state.waba_overrides.get(waba_id)
        if not subscribed:
            return {"data": []}
        app: dict[str, Any] = {
            "whatsapp_business_api_data": {
                "id": DEFAULT_APP_ID,
                "link": f"https://www.facebook.com/games/?app_id={DEFAULT_APP_ID}",
                "name": "Released Fake App",
            }
        }
        if override:
            app["override_callback_uri"] = override["override_callback_uri"]
        return {"data": [app]}

    async def subscribed_apps_post(request: Request) -> Response:
        waba_id = request.path_params["waba_id"]
        version = request.path_params["version"]
        params = await _read_params(request)
        problem = contracts.check_request("meta", "POST /{Version}/{WABA-ID}/subscribed_apps",
                                          params)
        if problem is not None:
            return invalid_parameter(str(problem))
        with state.lock:
            was = state.waba(waba_id)
            state.subscribed[waba_id] = True
            if not was:
                history("subscription", waba_id, "subscribed", None, None, version)
        if "override_callback_uri" not in params:
            # README: "a body-less POST /{WABA_ID}/subscribed_apps also removes a WABA-level
            # override".
            with state.lock:
                if state.waba_overrides.pop(waba_id, None) is not None:
                    history("waba", waba_id, "removed", None, None, version)
            return JSONResponse({"success": True})
        return await set_override("waba", waba_id, params, version)

    async def subscribed_apps_get(request: Request) -> Response:
        return JSONResponse(subscribed_apps_body(request.path_params["waba_id"]))

    async def subscribed_apps_delete(request: Request) -> Response:
        waba_id = request.path_params["waba_id"]
        with state.lock:
            was = state.waba(waba_id)
            state.subscribed[waba_id] = False
            state.waba_overrides.pop(waba_id, None)
            if was:
                history("subscription", waba_id, "unsubscribed", None, None,
                        request.path_params["version"])
        return JSONResponse({"success": True})

    # -- control ------------------------------------------------------------------------------

    async def c_sent(request: Request) -> Response:
        to = request.query_params.get("to")
        with state.lock:
            items = [
                dict(s)
                for s in state.sent
                if to is None or to in (s["to"], s["recipient"], s["user_id"])
            ]
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

    async def c_token(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            wanted = body.get("state", "valid")
            if wanted not in ("valid", "expired", "revoked"):
                return JSONResponse({"detail": "state must be valid, expired or revoked"}, 400)
            expires_at = body.get("expires_at")
            try:
                at = parse_when(expires_at) if expires_at is not None else None
            except (TypeError, ValueError) as exc:
                return JSONResponse({"detail": f"bad expires_at: {exc}"}, 400)
            with state.lock:
                state.token_state = {"state": wanted, "expires_at": at}
        with state.lock:
            current = dict(state.token_state)
        if current["expires_at"] is not None:
            current["expires_at_iso"] = iso(current["expires_at"])
        return JSONResponse(current)

    async def c_users(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            user = WhatsAppUser(
                phone=body.get("phone"),
                user_id=body.get("user_id") or "",
                parent_user_id=body.get("parent_user_id"),
                name=body.get("name", "Test User"),
                username=body.get("username"),
            )
            with state.lock:
                state.users[user.user_id] = user
        with state.lock:
            users = [_user_json(u) for u in state.users.values()]
        return JSONResponse(users)

    async def c_wabas(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            waba_id = str(body["waba_id"])
            with state.lock:
                state.waba(waba_id)
                if "subscribed" in body:
                    state.subscribed[waba_id] = bool(body["subscribed"])
                    history("subscription", waba_id,
                            "subscribed" if body["subscribed"] else "unsubscribed",
                            None, None, "control")
        with state.lock:
            return JSONResponse({"subscribed": dict(state.subscribed),
                                 "default_waba_id": state.default_waba_id})

    async def c_phone_numbers(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            pnid = str(body["phone_number_id"])
            with state.lock:
                record = state.phone_number(pnid)
                for key in ("waba_id", "display_phone_number", "verified_name", "quality_rating"):
                    if key in body:
                        record[key] = str(body[key])
                state.waba(record["waba_id"])
        with state.lock:
            return JSONResponse({k: dict(v) for k, v in state.phone_numbers.items()})

    async def c_deliveries(request: Request) -> Response:
        with state.lock:
            return JSONResponse([dict(d) for d in state.deliveries])

    async def c_deliver(request: Request) -> Response:
        body = await request.json()
        payload = body.get("payload")
        phone_number_id = body.get("phone_number_id")
        if payload is None:
            if "text" not in body or not phone_number_id:
                return JSONResponse(
                    {"detail": "give payload, or phone_number_id + from + text"}, 400
                )
            user = WhatsAppUser(
                phone=body.get("from", "15551234567") if "from" in body or not body.get(
                    "user_id") else None,
                user_id=body.get("user_id") or "",
                name=str(body.get("profile_name", "Test User")),
            )
            with state.lock:
                record = state.phone_number(str(phone_number_id))
                user = state.remember(user)
            payload = text_message_event(
                phone_number_id=str(phone_number_id),
                user=user,
                text=str(body["text"]),
                message_id=body.get("message_id"),
                context_message_id=body.get("context_message_id"),
                display_phone_number=record["display_phone_number"],
                waba_id=record["waba_id"],
                timestamp=int(state.clock.now()),
            )
        if not phone_number_id:
            try:
                change = payload["entry"][0]["changes"][0]["value"]
                phone_number_id = change["metadata"]["phone_number_id"]
            except (KeyError, IndexError, TypeError):
                phone_number_id = None
        _note_inbound(payload)
        url = body.get("url")
        reason = ""
        with state.lock:
            if url is None and phone_number_id:
                url, reason = state.callback_for(str(phone_number_id))
            secret = body.get("app_secret", state.app_secret)
        result = await post_webhook(
            payload, url, secret, kind="message", wait=float(body.get("timeout", 10.0)),
            reason=reason,
        )
        return JSONResponse(result)

    def _note_inbound(payload: dict[str, Any]) -> None:
        """Remember the senders (and when they last wrote) of a delivery the fake sends."""
        now = state.clock.now()
        try:
            changes = [c for e in payload.get("entry", []) for c in e.get("changes", [])]
        except (AttributeError, TypeError):
            return
        with state.lock:
            for change in changes:
                value = change.get("value") or {}
                contacts = {c.get("user_id"): c for c in value.get("contacts") or []}
                for message in value.get("messages") or []:
                    bsuid = message.get("from_user_id")
                    if message.get("type") == "system":
                        _apply_identity_change(message)
                        continue
                    if not bsuid:
                        continue
                    contact = contacts.get(bsuid, {})
                    if bsuid not in state.users:
                        state.users[bsuid] = WhatsAppUser(
                            phone=message.get("from") or None,
                            user_id=bsuid,
                            parent_user_id=message.get("from_parent_user_id"),
                            name=(contact.get("profile") or {}).get("name", "Test User"),
                        )
                    state.last_inbound[bsuid] = now

    def _apply_identity_change(message: dict[str, Any]) -> None:
        """A delivered ``system`` message changes the user as Meta knows them (lock held)."""
        system = message.get("system") or {}
        kind = system.get("type")
        if kind == "user_changed_user_id":
            old = system.get("previous_user_id") or message.get("from_user_id")
            new = system.get("user_id")
            user = state.users.pop(str(old), None) if old else None
            if new:
                base = user or WhatsAppUser(phone=message.get("from") or None, user_id=str(new))
                state.users[str(new)] = replace(base, user_id=str(new))
                if old in state.last_inbound:
                    state.last_inbound[str(new)] = state.last_inbound.pop(str(old))
        elif kind == "user_changed_number":
            bsuid = system.get("user_id") or message.get("from_user_id")
            if bsuid and bsuid in state.users and system.get("wa_id"):
                state.users[bsuid] = state.users[bsuid].with_phone(str(system["wa_id"]))

    async def c_identity(request: Request) -> Response:
        """Deliver an identity change of a known user, as Meta does, and apply it."""
        body = await request.json()
        phone_number_id = str(body["phone_number_id"])
        with state.lock:
            user = state.users.get(str(body["user_id"]))
            record = state.phone_number(phone_number_id)
        if user is None:
            return JSONResponse({"detail": f"unknown user {body['user_id']}"}, 404)
        common = {"phone_number_id": phone_number_id, "user": user,
                  "timestamp": int(state.clock.now()),
                  "display_phone_number": record["display_phone_number"],
                  "waba_id": record["waba_id"]}
        if body.get("new_phone"):
            payload = user_changed_number_event(new_phone=str(body["new_phone"]), **common)
        else:
            payload = user_changed_user_id_event(new_user_id=body.get("new_user_id"), **common)
        _note_inbound(payload)
        url = body.get("url")
        reason = ""
        with state.lock:
            if url is None:
                url, reason = state.callback_for(phone_number_id)
            secret = state.app_secret
        return JSONResponse(await post_webhook(payload, url, secret, kind="system",
                                               reason=reason))

    routes = [
        Route("/_fake/identity", c_identity, methods=["POST"]),
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
        Route("/_fake/deliveries", c_deliveries, methods=["GET"]),
        Route("/_fake/token", c_token, methods=["GET", "POST"]),
        Route("/_fake/users", c_users, methods=["GET", "POST"]),
        Route("/_fake/wabas", c_wabas, methods=["GET", "POST"]),
        Route("/_fake/phone_numbers", c_phone_numbers, methods=["GET", "POST"]),
        clock_route(state.clock),
        Route(
            "/{version}/{phone_number_id}/messages",
            api("POST /{version}/{phone_number_id}/messages", messages),
            methods=["POST"],
        ),
        Route(
            "/{version}/{waba_id}/subscribed_apps",
            api("POST /{version}/{waba_id}/subscribed_apps", subscribed_apps_post),
            methods=["POST"],
        ),
        Route(
            "/{version}/{waba_id}/subscribed_apps",
            api("GET /{version}/{waba_id}/subscribed_apps", subscribed_apps_get),
            methods=["GET"],
        ),
        Route(
            "/{version}/{waba_id}/subscribed_apps",
            api("DELETE /{version}/{waba_id}/subscribed_apps", subscribed_apps_delete),
            methods=["DELETE"],
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
    app = Starlette(routes=routes)

    async def unknown_path(request: Request, exc: Exception) -> Response:
        return graph_error(400, 2500, f"Unknown path components: {request.url.path}")

    app.add_exception_handler(404, unknown_path)
    return app


def _user_json(user: WhatsAppUser) -> dict[str, Any]:
    return {
        "phone": user.phone,
        "user_id": user.user_id,
        "parent_user_id": user.parent_user_id,
        "name": user.name,
        "username": user.username,
    }


class FakeMeta(FakeServer):
    """The Meta Graph API fake. ``FakeMeta().start()`` (thread) or ``FakeMeta.spawn()``
    (child process); both are context managers and share this control API.

    ``access_token``: the Bearer token to accept (None: any non-empty token).
    ``app_secret``: used to sign the webhooks the fake delivers, like Meta does.
    ``verify_webhooks``: perform Meta's ``hub.challenge`` GET when a callback is registered.
    ``waba_subscribed``: whether the app starts subscribed to each WABA (Meta: it is not until
    ``POST /{WABA_ID}/subscribed_apps``; tests of an onboarded client may start with True).
    ``status_webhooks``: the statuses delivered after each accepted send (sent, delivered,
    read), ``status_delay`` seconds apart, to the number's callback while subscribed.
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
        application_callback_url: str | None = DEFAULT_APP_CALLBACK,
        latency: float = 0.0,
        waba_id: str = DEFAULT_WABA_ID,
        waba_subscribed: bool = False,
        status_webhooks: Sequence[str] = ("sent", "delivered"),
        status_delay: float = 0.05,
    ) -> None:
        super().__init__()
        self.version = version
        self.state = MetaState(
            access_token=access_token,
            app_secret=app_secret,
            verify_webhooks=verify_webhooks,
            application_callback_url=application_callback_url,
            latency=latency,
            waba_id=waba_id,
            waba_subscribed=waba_subscribed,
            status_webhooks=status_webhooks,
            status_delay=status_delay,
        )

    @property
    def path_prefix(self) -> str:
        return "/" + self.version

    def build_app(self) -> Starlette:
        return create_app(self.state, self)

    def cli_args(self) -> list[str]:
        state = self.state
        args = ["--version", self.version, "--latency", str(state.latency)]
        if state.application_callback_url:
            args += ["--application-callback-url", state.application_callback_url]
        if state.access_token is None:
            args.append("--any-token")
        else:
            args += ["--access-token", state.access_token]
        if state.app_secret is not None:
            args += ["--app-secret", state.app_secret]
        if state.verify_webhooks:
            args.append("--verify-webhooks")
        args += ["--waba-id", state.default_waba_id]
        if state.waba_subscribed:
            args.append("--waba-subscribed")
        args += ["--status-webhooks", ",".join(state.status_webhooks)]
        args += ["--status-delay", str(state.status_delay)]
        return args

    # -- control API (HTTP, so it works for thread, child process and attach()) ---------------

    def sent(self, to: str | None = None) -> list[dict[str, Any]]:
        """Messages sent through the API, oldest first. Each: ``id`` (wamid), ``phone_number_id``,
        ``to`` (phone number or None), ``recipient`` (BSUID when sent by ``recipient``, else
        None), ``user_id`` (the recipient's BSUID), ``type``, ``text`` (body for text messages,
        else None), ``context_message_id``, ``recipient_type``, ``body`` (the request JSON),
        ``at``, ``version``. ``to`` filters by phone number or BSUID."""
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
        "subscribed": {waba_id: bool}, "history": [{kind, target, action, ...}]}``."""
        result: dict[str, Any] = self._get("/webhooks")
        return result

    def webhook_override(self, phone_number_id: str) -> str | None:
        """The callback override currently set for a phone number, or None."""
        entry = self.webhooks()["phone_numbers"].get(phone_number_id)
        return None if entry is None else str(entry["override_callback_uri"])

    def subscribed(self, waba_id: str = DEFAULT_WABA_ID) -> bool:
        """Whether the app is subscribed to the WABA."""
        return bool(self._get("/wabas")["subscribed"].get(waba_id, False))

    def set_subscribed(self, waba_id: str = DEFAULT_WABA_ID, subscribed: bool = True) -> None:
        """Subscribe or unsubscribe the app, as if done in Meta's dashboard."""
        self._post("/wabas", {"waba_id": waba_id, "subscribed": subscribed})

    def add_phone_number(
        self,
        phone_number_id: str,
        *,
        waba_id: str = DEFAULT_WABA_ID,
        display_phone_number: str | None = None,
        verified_name: str | None = None,
    ) -> dict[str, Any]:
        """Register a business phone number under a WABA (unknown numbers join the default)."""
        body: dict[str, Any] = {"phone_number_id": phone_number_id, "waba_id": waba_id}
        if display_phone_number:
            body["display_phone_number"] = display_phone_number
        if verified_name:
            body["verified_name"] = verified_name
        result: dict[str, Any] = self._post("/phone_numbers", body)[phone_number_id]
        return result

    def add_user(self, user: WhatsAppUser) -> WhatsAppUser:
        """Make a WhatsApp user known to the fake (so sends to them get their BSUID/phone)."""
        self._post("/users", _user_json(user))
        return user

    def users(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/users")
        return result

    def set_token_state(self, state: str = "valid", *, expires_at: When | None = None) -> None:
        """``"valid"``, ``"expired"`` (error 190, subcode 463) or ``"revoked"`` (190, 460);
        ``expires_at``: the token stops working at that time of the fake's clock."""
        at = expires_at.isoformat() if isinstance(expires_at, datetime | date) else expires_at
        self._post("/token", {"state": state, "expires_at": at})

    def expire_token(self) -> None:
        self.set_token_state("expired")

    def revoke_token(self) -> None:
        self.set_token_state("revoked")

    def script_errors(self, errors: Sequence[str | int | dict[str, Any]]) -> None:
        """Queue error answers for the next API calls, one per call, in order.

        Items: a preset name (``"rate_limit"`` 429/130429, ``"pair_rate_limit"`` 429/131056,
        ``"re_engagement"`` 400/131047, ``"undeliverable"`` 400/131026, ``"unsupported_type"``
        400/131051, ``"auth"`` 401/190, ``"permission"`` 403/200, ``"access_denied"`` 403/10,
        ``"policy_block"`` 400/368, ``"server_error"`` 500/1, ``"unavailable"`` 503/2,
        ``"invalid_parameter"`` 400/100, ``"timeout"`` sleeps 30 s then 504), a Meta error code
        (int), or a dict with any of ``kind``, ``status``, ``code``, ``message``, ``details``,
        ``error_subcode``, ``type``, ``headers``, ``delay`` (seconds before answering),
        ``times`` (repeat count), ``endpoint`` (only calls whose endpoint key contains it).
        """
        self._post("/errors", {"errors": list(errors)})

    def change_user_id(
        self, phone_number_id: str, user_id: str, new_user_id: str | None = None,
        *, url: str | None = None,
    ) -> dict[str, Any]:
        """The user's BSUID changes: deliver Meta's ``user_changed_user_id`` system message
        (to ``url`` or where Meta would) and know the user by the new BSUID from now on."""
        result: dict[str, Any] = self._post("/identity", {
            "phone_number_id": phone_number_id, "user_id": user_id,
            "new_user_id": new_user_id, "url": url})
        return result

    def change_number(
        self, phone_number_id: str, user_id: str, new_phone: str, *, url: str | None = None
    ) -> dict[str, Any]:
        """The user moves to ``new_phone``: deliver ``user_changed_number`` and apply it."""
        result: dict[str, Any] = self._post("/identity", {
            "phone_number_id": phone_number_id, "user_id": user_id, "new_phone": new_phone,
            "url": url})
        return result

    def deliveries(self) -> list[dict[str, Any]]:
        """Every webhook the fake tried to deliver: ``url``, ``kind`` (message, status),
        ``status`` (HTTP status or None), ``delivered``, ``response``, ``payload``, ``at``."""
        result: list[dict[str, Any]] = self._get("/deliveries")
        return result

    def deliver(
        self,
        payload: dict[str, Any],
        url: str | None = None,
        *,
        app_secret: str | None = None,
    ) -> dict[str, Any]:
        """POST a webhook ``payload`` signed with the app secret to ``url``, or (``url=None``)
        where Meta would: the number's override, the WABA's, the app's callback, and nowhere
        while the app is not subscribed to the WABA. Returns ``{url, status, delivered,
        response, payload}``."""
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
        from_number: str | None = "15551234567",
        user_id: str | None = None,
        url: str | None = None,
        message_id: str | None = None,
        app_secret: str | None = None,
        profile_name: str = "Test User",
    ) -> dict[str, Any]:
        """Simulate a user's inbound text: build Meta's webhook and deliver it signed.
        ``from_number=None`` with a ``user_id``: a user known only by a BSUID."""
        body: dict[str, Any] = {
            "phone_number_id": phone_number_id,
            "text": text,
            "url": url,
            "message_id": message_id,
            "profile_name": profile_name,
        }
        if from_number is not None:
            body["from"] = from_number
        if user_id is not None:
            body["user_id"] = user_id
        if app_secret is not None:
            body["app_secret"] = app_secret
        result: dict[str, Any] = self._post("/deliver", body)
        return result


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--access-token", default=DEFAULT_ACCESS_TOKEN)
    parser.add_argument("--any-token", action="store_true", help="accept any Bearer token")
    parser.add_argument("--app-secret", default=DEFAULT_APP_SECRET)
    parser.add_argument("--verify-webhooks", action="store_true")
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--application-callback-url", default=DEFAULT_APP_CALLBACK)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--waba-id", default=DEFAULT_WABA_ID)
    parser.add_argument("--waba-subscribed", action="store_true",
                        help="the app starts subscribed to every WABA")
    parser.add_argument("--status-webhooks", default="sent,delivered",
                        help="statuses delivered after each send, comma-separated ('' for none)")
    parser.add_argument("--status-delay", type=float, default=0.05)


def _factory(args: argparse.Namespace) -> FakeServer:
    return FakeMeta(
        None if args.any_token else args.access_token,
        app_secret=args.app_secret,
        verify_webhooks=args.verify_webhooks,
        version=args.version,
        application_callback_url=args.application_callback_url or None,
        latency=args.latency,
        waba_id=args.waba_id,
        waba_subscribed=args.waba_subscribed,
        status_webhooks=[s for s in args.status_webhooks.split(",") if s],
        status_delay=args.status_delay,
    )


def main(argv: Sequence[str] | None = None) -> None:
    serve_cli("meta", _factory, _add_arguments, argv)


if __name__ == "__main__":
    main()
