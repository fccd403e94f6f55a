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
APP_SECRET = "appsecretVALUE987"
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
