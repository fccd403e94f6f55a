"""Logging configuration: JSON/console output and redaction of every secret from every line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from pydantic import SecretStr

from bot.core.config import Settings
from bot.core.logging import REDACTED, Redactor, configure_logging, redact

TOKEN = "EAAGtokenSECRET123456"
APP_SECRET = "a5ec0e7a1b2c3d4e5f60718293a4b5c6"  # shaped like Meta's: 32 hex
VERIFY = "verifyTOKENvalue55"
OPENAI = "sk-proj-openaiKEY000111"
SECRETS = (TOKEN, APP_SECRET, VERIFY, OPENAI)


def make_settings(log_format: str = "json") -> Settings:
    return Settings(
        meta_access_token=SecretStr(TOKEN),
        meta_app_secret=SecretStr(APP_SECRET),
        meta_verify_token=SecretStr(VERIFY),
        openai_api_key=SecretStr(OPENAI),
        log_format=log_format,
        log_level="DEBUG",
    )


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Give the process's logging configuration back as it was (pytest's handlers included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture(params=["json", "console"])
def captured(request: pytest.FixtureRequest) -> io.StringIO:
    buffer = io.StringIO()
    configure_logging(make_settings(request.param), stream=buffer)
    return buffer


def assert_clean(text: str) -> None:
    assert text.strip(), "nothing was logged"
    for secret in SECRETS:
        assert secret not in text


def test_structlog_event_values_are_redacted(captured: io.StringIO) -> None:
    log = structlog.get_logger("bot.test")
    log.info("calling graph", token=TOKEN, nested={"key": [OPENAI]}, note=f"secret={APP_SECRET}")
    text = captured.getvalue()
    assert_clean(text)
    assert "calling graph" in text
    assert REDACTED in text


def test_stdlib_loggers_are_redacted(captured: io.StringIO) -> None:
    for name in ("uvicorn.error", "uvicorn.access", "celery.worker", "httpx", "root"):
        logging.getLogger(name).warning("value %s and %s", TOKEN, {"verify": VERIFY})
    logging.getLogger("httpx").warning(
        "HTTP Request: GET https://graph.example/v23.0/me?access_token=%s", "plainleak12345"
    )
    text = captured.getvalue()
    assert_clean(text)
    assert "plainleak12345" not in text
    assert text.count(REDACTED) >= 6


def test_exception_text_is_redacted_stdlib(captured: io.StringIO) -> None:
    try:
        raise RuntimeError(f"graph said no to Bearer {TOKEN} with key {OPENAI}")
    except RuntimeError:
        logging.getLogger("celery.worker").exception("task failed for %s", APP_SECRET)
    text = captured.getvalue()
    assert_clean(text)
    assert "RuntimeError" in text
    assert "task failed" in text


def test_exception_text_is_redacted_structlog(captured: io.StringIO) -> None:
    log = structlog.get_logger("bot.worker")
    try:
        raise ValueError(f"openai rejected {OPENAI}; app secret {APP_SECRET}")
    except ValueError:
        log.exception("answer failed", verify=VERIFY)
    text = captured.getvalue()
    assert_clean(text)
    assert "ValueError" in text


def test_json_format_emits_json_lines() -> None:
    buffer = io.StringIO()
    configure_logging(make_settings("json"), stream=buffer)
    structlog.get_logger("bot.x").info("hello", wamid="wamid.1")
    logging.getLogger("uvicorn.error").info("Started server process")
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert lines[0]["event"] == "hello"
    assert lines[0]["wamid"] == "wamid.1"
    assert lines[0]["level"] == "info"
    assert lines[1]["event"] == "Started server process"
    assert lines[1]["logger"] == "uvicorn.error"


def test_reconfiguring_keeps_a_single_handler() -> None:
    buffer = io.StringIO()
    configure_logging(make_settings(), stream=io.StringIO())
    configure_logging(make_settings(), stream=buffer)
    logging.getLogger("x").warning("once")
    assert buffer.getvalue().count("once") == 1


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
        ("GET /v1/x?access_token=EAAB12345&fields=id", "EAAB12345"),
        ('{"api_key": "sk-123456789"}', "sk-123456789"),
        ("redis://:hunter2pass@redis:6379/0", "hunter2pass"),
        ("postgresql+asyncpg://bot:pg-pass-99@db/released", "pg-pass-99"),
        ("hub.verify_token=abcdef123", "abcdef123"),
    ],
)
def test_patterns(text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out
    assert REDACTED in out


def test_redactor_prefers_longest_secret() -> None:
    r = Redactor(["abcdef", "abcdefghij"])
    assert r("x abcdefghij y") == f"x {REDACTED} y"
    assert r("nothing here") == "nothing here"


def test_traceback_locals_are_not_rendered(captured: io.StringIO) -> None:
    def call_graph() -> None:
        # A local that holds a value not known to the redactor must not be printed either.
        unknown_secret = "localonly-abcdefgh-" + "0123456789" * 10
        raise ConnectionError(f"failed after {len(unknown_secret)} bytes")

    try:
        call_graph()
    except ConnectionError:
        logging.getLogger("bot.x").exception("send failed")
        structlog.get_logger("bot.y").exception("send failed again")
    text = captured.getvalue()
    assert "ConnectionError" in text
    assert "localonly" not in text


def test_silenced_library_loggers_are_brought_back() -> None:
    """uvicorn --log-level, or a fileConfig that disables existing loggers, must not hide lines."""
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    logging.getLogger("celery.worker").disabled = True
    buffer = io.StringIO()
    configure_logging(make_settings("json"), stream=buffer)
    logging.getLogger("uvicorn.error").info("server up")
    logging.getLogger("celery.worker").info("worker up")
    events = [json.loads(line)["event"] for line in buffer.getvalue().splitlines()]
    assert events == ["server up", "worker up"]


def test_access_log_query_strings_are_redacted(captured: io.StringIO) -> None:
    """uvicorn's access line holds the query string of the verification handshake."""
    path = "/webhook?hub.mode=subscribe&hub.verify_token=attackerguess1&hub.challenge=42"
    for token_path in (path, path.replace("attackerguess1", VERIFY)):
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "10.0.0.7:5123", "GET", token_path, "1.1", 403
        )
    text = captured.getvalue()
    assert_clean(text)
    assert "attackerguess1" not in text
    assert "hub.challenge=42" in text


@pytest.mark.usefixtures("restore_logging")
def test_no_access_log_stays_off() -> None:
    # What `uvicorn --no-access-log` does before it imports the app (and so our logging setup).
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    stream = io.StringIO()
    configure_logging(make_settings(), stream=stream)
    access.info('127.0.0.1:1 - "POST /webhook HTTP/1.1" 200')
    assert stream.getvalue() == ""
    access.propagate = True  # and with the access log on, its lines come through
    configure_logging(make_settings(), stream=stream)
    access.info('127.0.0.1:1 - "POST /webhook HTTP/1.1" 200')
    assert "POST /webhook" in stream.getvalue()


# -- every secret the process holds, whole texts, phone numbers and BSUIDs --------------------


REDIS_PASSWORD = "r3dis-Pass-8812"
DB_PASSWORD = "pg-S3cret%2Fwith%2Fslash"  # as written in the URL (percent-encoded)
PREVIOUS_VERIFY = "previousVERIFYtoken42"


def test_every_secret_the_process_holds_is_redacted() -> None:
    """Redis and database passwords and the previous verify token too, also outside URLs."""
    settings = make_settings().model_copy(
        update={
            "redis_url": f"redis://:{REDIS_PASSWORD}@redis:6379/0",
            "celery_broker_url": f"redis://default:{REDIS_PASSWORD}@redis:6379/1",
            "database_url": f"postgresql+asyncpg://bot:{DB_PASSWORD}@db/released",
            "meta_verify_token_previous": SecretStr(PREVIOUS_VERIFY),
        }
    )
    buffer = io.StringIO()
    configure_logging(settings, stream=buffer)
    log = structlog.get_logger("bot.test")
    # Bare values, not inside URLs: only the list of the process's secrets can catch them.
    log.warning("auth failed", tried=REDIS_PASSWORD, db="pg-S3cret/with/slash", url=DB_PASSWORD)
    logging.getLogger("celery.worker").error("handshake with %s", PREVIOUS_VERIFY)
    text = buffer.getvalue()
    assert_clean(text)
    for leak in (REDIS_PASSWORD, "pg-S3cret/with/slash", DB_PASSWORD, PREVIOUS_VERIFY):
        assert leak not in text
    assert text.count(REDACTED) >= 3


def test_phone_numbers_and_bsuids_are_masked_in_every_line(captured: io.StringIO) -> None:
    """Meta's error titles name the recipient; users' ids never reach the logs whole."""
    log = structlog.get_logger("bot.worker")
    log.warning("send failed", title="Message undeliverable to 16505551234", wa_id="447700900123")
    logging.getLogger("bot.tasks").warning(
        "message %s failed: %s", "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        "Recipient +16505550000 / US.13491208655302741918 (parent US.ENT.11815799212886844830)",
    )
    text = captured.getvalue()
    for whole in ("16505551234", "447700900123", "6505550000", "13491208655302741918",
                  "11815799212886844830"):
        assert whole not in text
    assert "+***1234" in text and "US.***1918" in text and "US.ENT.***4830" in text
    # What is not a person stays readable: wamids, error codes, the agent's phone number id.
    assert "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=" in text


def test_the_agents_own_phone_number_id_stays_readable() -> None:
    buffer = io.StringIO()
    configure_logging(make_settings().model_copy(update={"phone_number_id": "106540352242922"}),
                      stream=buffer)
    structlog.get_logger("bot.api").info("foreign", ours="106540352242922", code=131047)
    assert "106540352242922" in buffer.getvalue() and "131047" in buffer.getvalue()


def test_meta_error_text_is_redacted_before_it_is_cut() -> None:
    """A secret straddling the 300-character cut of an error title left a piece of itself."""
    import httpx2 as httpx

    from bot.whatsapp.client import error_from_response

    configure_logging(make_settings(), stream=io.StringIO())
    title = "x" * 290 + f" token {TOKEN} for 16505551234"
    response = httpx.Response(400, json={"error": {"message": title, "code": 100}})
    error = error_from_response(response, "send")
    assert error.title is not None and len(error.title) <= 300
    # Cut inside the token: before the fix its first characters were kept.
    assert error.title.endswith(" token [RE")
    assert TOKEN[:3] not in error.title


def test_every_secret_setting_is_redacted() -> None:
    """A secret setting added later (typed SecretStr) is redacted without anyone remembering
    to list it: the test sets every one and finds each in the redaction list."""
    import typing

    fields = [
        name for name, info in Settings.model_fields.items()
        if SecretStr in typing.get_args(info.annotation) or info.annotation is SecretStr
    ]
    assert {"meta_app_secret", "meta_access_token", "openai_api_key"} <= set(fields)
    values = {name: ("0123456789abcdef" * 2 if name == "meta_app_secret" else f"{name}-value-42")
              for name in fields}
    settings = Settings(**{name: SecretStr(v) for name, v in values.items()})
    held = settings.secret_values()
    for name, value in values.items():
        assert value in held, f"{name} is not redacted"
