"""``whatsapp_operator.meta_webhook`` against the Meta Graph API fake (``released.fakes.meta``).

Covers setting, reading and removing the phone number's callback override, Meta's verification
handshake (against a tiny local web tier), and the mapping of Meta's errors to retryable and
permanent errors whose messages hold neither the access token nor the verify token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from whatsapp_operator import meta_webhook as mw
from whatsapp_operator.errors import PermanentError, TemporaryError
from whatsapp_operator.retrying import NO_RETRIES, RetryPolicy

from released.fakes.meta import FakeMeta
from tests.servers import free_port

TOKEN = "EAAtestaccesstoken1234567890"
PHONE = "106540352242922"
CALLBACK = "https://bot.example.com/webhook"
VERIFY = "verify-token-0123456789"


@pytest.fixture(scope="module")
def meta() -> Iterator[FakeMeta]:
    # The client's Meta app is already subscribed to the number's WABA (onboarding); without
    # that Meta refuses a webhook override (README of ../shared/contracts).
    fake = FakeMeta(access_token=TOKEN, waba_subscribed=True).start()
    yield fake
    fake.stop()


@pytest.fixture
def graph(meta: FakeMeta) -> str:
    meta.reset()
    meta.configure(verify_webhooks=False)
    return meta.url


class _WebTier:
    """A minimal stand-in for the web tier's ``GET /webhook`` handshake."""

    def __init__(self, accepted: set[str]) -> None:
        accepted_tokens = accepted

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                token = query.get("hub.verify_token", [""])[0]
                if query.get("hub.mode") == ["subscribe"] and token in accepted_tokens:
                    body = query.get("hub.challenge", [""])[0].encode()
                    self.send_response(200)
                else:
                    body = b"forbidden"
                    self.send_response(403)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_register_read_unregister(graph: str, meta: FakeMeta) -> None:
    assert await mw.current_callback(graph, PHONE, TOKEN) is None
    await mw.register_callback(graph, PHONE, TOKEN, CALLBACK, VERIFY)
    assert await mw.current_callback(graph, PHONE, TOKEN) == CALLBACK
    assert meta.webhooks()["phone_numbers"][PHONE] == {
        "override_callback_uri": CALLBACK,
        "verify_token": VERIFY,
    }
    # Idempotent.
    await mw.register_callback(graph, PHONE, TOKEN, CALLBACK, VERIFY)
    assert meta.webhook_override(PHONE) == CALLBACK

    # The request has the documented shape and the token only in the header.
    posts = [r for r in meta.requests() if r["method"] == "POST"]
    assert posts[-1]["body"] == {
        "webhook_configuration": {"override_callback_uri": CALLBACK, "verify_token": VERIFY}
    }
    assert TOKEN not in str(posts[-1]["query"])

    await mw.unregister_callback(graph, PHONE, TOKEN)
    assert await mw.current_callback(graph, PHONE, TOKEN) is None
    assert meta.webhook_override(PHONE) is None
    await mw.unregister_callback(graph, PHONE, TOKEN)  # nothing set: still fine


async def test_verification_handshake(graph: str, meta: FakeMeta) -> None:
    meta.configure(verify_webhooks=True)
    web = _WebTier({VERIFY})
    try:
        await mw.register_callback(graph, PHONE, TOKEN, web.url, VERIFY)
        assert meta.webhook_override(PHONE) == web.url
        # A token the web tier does not accept yet: retryable, and no token in the message.
        with pytest.raises(TemporaryError) as excinfo:
            await mw.register_callback(graph, PHONE, TOKEN, web.url, "new-token-not-rolled-out")
        assert excinfo.value.reason == "WebhookVerificationFailed"
        assert "new-token-not-rolled-out" not in str(excinfo.value)
        assert TOKEN not in str(excinfo.value)
        assert meta.webhook_override(PHONE) == web.url
    finally:
        web.close()


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        ("rate_limit", TemporaryError, "MetaRateLimited"),
        ("server_error", TemporaryError, "MetaUnavailable"),
        ("unavailable", TemporaryError, "MetaUnavailable"),
        ("auth", PermanentError, "MetaTokenRejected"),
        ("invalid_parameter", PermanentError, "MetaRequestInvalid"),
        (
            {"status": 403, "code": 200, "message": "Permissions error"},
            PermanentError,
            "MetaPermissionDenied",
        ),
        (
            {"status": 400, "code": 4, "message": "Application request limit reached"},
            TemporaryError,
            "MetaRateLimited",
        ),
        # released.providers.meta decides for the operator as for the bot:
        ("policy_block", TemporaryError, "MetaPolicyBlocked"),
        ("access_denied", PermanentError, "MetaPermissionDenied"),
        ({"status": 400, "code": 131031, "message": "Account locked"}, PermanentError,
         "MetaAccountRestricted"),
    ],
)
async def test_error_mapping(
    graph: str, meta: FakeMeta, error: Any, kind: type[Exception], reason: str
) -> None:
    """Meta's verdict (released.providers.meta) decides; one answer, no retry."""
    meta.script_errors([error])
    with pytest.raises(kind) as excinfo:
        await mw.register_callback(graph, PHONE, TOKEN, CALLBACK, VERIFY, retry=NO_RETRIES)
    assert getattr(excinfo.value, "reason", None) == reason
    assert TOKEN not in str(excinfo.value) and VERIFY not in str(excinfo.value)
    assert meta.webhook_override(PHONE) is None


FAST = RetryPolicy(attempts=3, initial=0.01, max_backoff=0.05)


@pytest.mark.parametrize("error", ["server_error", "unavailable", "rate_limit"])
async def test_a_passing_failure_is_retried_at_once(graph: str, meta: FakeMeta, error: str) -> None:
    meta.script_errors([error])
    await mw.register_callback(graph, PHONE, TOKEN, CALLBACK, VERIFY, retry=FAST)
    assert meta.webhook_override(PHONE) == CALLBACK
    assert len([r for r in meta.requests() if r["method"] == "POST"]) == 2


async def test_a_lasting_failure_gives_up_after_the_policy(graph: str, meta: FakeMeta) -> None:
    meta.script_errors([{"kind": "server_error", "times": 5}])
    with pytest.raises(TemporaryError) as excinfo:
        await mw.register_callback(graph, PHONE, TOKEN, CALLBACK, VERIFY, retry=FAST)
    assert excinfo.value.reason == "MetaUnavailable"
    assert len(meta.requests()) == 3


async def test_refusals_and_long_waits_are_not_retried_inline(graph: str, meta: FakeMeta) -> None:
    # A refused token, a policy block (lasts hours), a rate limit asking for minutes: one try
    # each; the pass is retried later with the delay.
    meta.script_errors(
        [
            "auth",
            "policy_block",
            {"kind": "rate_limit", "headers": {"Retry-After": "120"}},
        ]
    )
    for expected in ("MetaTokenRejected", "MetaPolicyBlocked", "MetaRateLimited"):
        with pytest.raises((TemporaryError, PermanentError)) as excinfo:
            await mw.register_callback(graph, PHONE, TOKEN, CALLBACK, VERIFY, retry=FAST)
        assert excinfo.value.reason == expected
    assert isinstance(excinfo.value, TemporaryError) and excinfo.value.delay == 120
    assert len(meta.requests()) == 3


async def test_wrong_token_is_permanent_and_not_leaked(graph: str) -> None:
    wrong = "EAAwrongtoken0987654321"
    with pytest.raises(PermanentError) as excinfo:
        await mw.current_callback(graph, PHONE, wrong)
    assert excinfo.value.reason == "MetaTokenRejected"
    assert wrong not in str(excinfo.value)
    assert "spec.secrets.meta" in str(excinfo.value)


async def test_unreachable_is_temporary() -> None:
    graph = f"http://127.0.0.1:{free_port()}/v25.0"
    with pytest.raises(TemporaryError) as excinfo:
        await mw.register_callback(graph, PHONE, TOKEN, CALLBACK, VERIFY, request_timeout=2)
    assert excinfo.value.reason == "MetaUnavailable"


async def test_bad_inputs_are_refused_before_calling(graph: str, meta: FakeMeta) -> None:
    with pytest.raises(PermanentError, match="digits"):
        await mw.register_callback(graph, "12/../34", TOKEN, CALLBACK, VERIFY)
    with pytest.raises(PermanentError, match="200 characters"):
        await mw.register_callback(graph, PHONE, TOKEN, "https://x/" + "a" * 200, VERIFY)
    with pytest.raises(PermanentError, match="http"):
        await mw.register_callback(graph, PHONE, TOKEN, "ftp://x/webhook", VERIFY)
    assert meta.requests() == []


async def test_rotation_registers_the_new_token(graph: str, meta: FakeMeta) -> None:
    """rotation's REVOKE step registers the current verify token once the web tier has it."""
    from whatsapp_operator import credentials as keys
    from whatsapp_operator import rotation as rot

    meta.configure(verify_webhooks=True)
    initial = {keys.REDIS_PASSWORD: "redis-0", keys.VERIFY_TOKEN: "verify-0"}
    data = rot.generate_rotated_secret_data(initial, "r1")
    web = _WebTier({data[keys.VERIFY_TOKEN], data[keys.VERIFY_TOKEN_PREVIOUS]})
    try:
        registration = rot.MetaRegistration(graph, PHONE, TOKEN, web.url)
        await rot.revoke_previous_credentials(data, meta=registration)
        assert meta.webhooks()["phone_numbers"][PHONE]["verify_token"] == data[keys.VERIFY_TOKEN]
    finally:
        web.close()
