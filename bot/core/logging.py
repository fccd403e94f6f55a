"""Structured logging for the web tier, the worker and the purge, with secrets redacted.

:func:`configure_logging` sets up structlog and the standard library together: structlog's
loggers and every stdlib logger (uvicorn, celery, httpx, sqlalchemy...) go through one root
handler whose formatter renders JSON (``LOG_FORMAT=json``) or a console line. Redaction happens
twice:

- :class:`RedactingFilter`, attached to the handler, renders each stdlib record's message and
  exception text and redacts them before any formatter sees them;
- the formatter's last step redacts the final rendered line, so nothing a processor, a renderer
  or a traceback adds can escape.

Redacted are every value of :meth:`Settings.secret_values` (the secret settings and the Redis
and database passwords), ``Bearer <token>`` headers, ``access_token=``/``api_key=``-style
parameters and passwords in URLs such as ``REDIS_URL``. Then WhatsApp users' phone numbers
(runs of 10 to 15 digits, ``+`` or not) and business-scoped user IDs (``US.1349...``) are
masked to their last four characters (``+***1234``, ``US.***1918``), wherever they appear:
event values, Meta's error titles, exception texts. The agent's own ``PHONE_NUMBER_ID`` (a
business id, not a person) stays readable. Redaction always runs on whole texts, before
anything is cut short.
Celery callers should connect ``celery.signals.setup_logging`` to :func:`configure_logging` so
Celery does not install its own handlers; :func:`configure_logging` is idempotent.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from bot.core.config import Settings

REDACTED = "[REDACTED]"

#: Loggers that install handlers of their own; ours replaces them so they pass through redaction.
_CAPTURED_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "celery",
    "celery.task",
    "celery.worker",
    "celery.redirected",
    "kombu",
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "openai",
    "sqlalchemy",
    "fastapi",
    "kopf",
)
_QUIET_LOGGERS = ("httpcore", "httpcore2", "kombu", "asyncio", "aiosqlite", "sqlalchemy.engine")

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer <token>
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+"), rf"\1 {REDACTED}"),
    # access_token=..., api_key: "...", "app_secret": "...", password=...
    (
        re.compile(
            r"(?i)(\b(?:access_token|api_key|apikey|app_secret|client_secret|verify_token"
            r"|hub\.verify_token|password|secret|token)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;}]+"
        ),
        rf"\1{REDACTED}",
    ),
    # scheme://user:password@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
)


#: A phone number as WhatsApp writes it (E.164 digits, with or without "+"), not inside a
#: longer word or number (wamids are base64, so their digit runs are inside words).
_PHONE = re.compile(r"(?<![\w.+-])\+?\d{6,11}(\d{4})(?![\w-])")
#: A business-scoped user ID: two letters, optionally ".ENT" (a parent BSUID), a dot, an id.
_BSUID = re.compile(r"(?<![\w.])([A-Z]{2}(?:\.ENT)?)\.[A-Za-z0-9]{2,124}([A-Za-z0-9]{4})(?![\w])")


class Redactor:
    """Removes known secret values and secret-looking patterns from text, and masks phone
    numbers and BSUIDs (except the ``keep`` values, such as the agent's phone number id)."""

    def __init__(self, secrets: Iterable[str] = (), keep: Iterable[str] = ()) -> None:
        self._secrets: re.Pattern[str] | None = None
        self._keep: frozenset[str] = frozenset()
        self.set_secrets(secrets, keep)

    def set_secrets(self, secrets: Iterable[str], keep: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._secrets = re.compile("|".join(re.escape(v) for v in values)) if values else None
        self._keep = frozenset(keep)

    def _mask_phone(self, match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole.lstrip("+") in self._keep:
            return whole
        return "+***" + match.group(1)

    def __call__(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        text = _PHONE.sub(self._mask_phone, text)
        return _BSUID.sub(r"\1.***\2", text)

    def redact_value(self, value: Any) -> Any:
        """Redact strings inside (nested) containers; other values are returned unchanged."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.redact_value(v) for v in value)
        return value


#: The process-wide redactor; :func:`configure_logging` loads the settings' secrets into it.
redactor = Redactor()


def redact(text: str) -> str:
    """``text`` with every known secret and secret-looking pattern replaced by ``[REDACTED]``."""
    return redactor(text)


class RedactingFilter(logging.Filter):
    """A handler filter that renders and redacts a record's message and exception text.

    After it, ``record.msg`` is the final, redacted message (``record.args`` is cleared) and
    ``record.exc_text`` the redacted traceback, so any formatter prints only redacted text.
    structlog's own event dicts are left to the formatter's processors, which redact them.
    """

    def __init__(self, redactor_: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor_ or redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) or record.args:
            try:
                message = record.getMessage()
            except Exception:  # a broken %-format must not lose the line
                message = f"{record.msg!r} {record.args!r}"
            record.msg = self._redactor(message)
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redactor(record.stack_info)
        return True


def _redact_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every string value of the event dict."""
    return {key: redactor.redact_value(value) for key, value in event_dict.items()}


def _redact_rendered(_: WrappedLogger, __: str, rendered: Any) -> Any:
    """Final step after the renderer: redact the line as it will be written."""
    if isinstance(rendered, str):
        return redactor(rendered)
    if isinstance(rendered, bytes):
        return redactor(rendered.decode("utf-8", "replace"))
    return rendered


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for this process (idempotent).

    ``stream`` defaults to stderr; tests pass a buffer to capture the lines.
    """
    redactor.set_secrets(settings.secret_values(), keep=[settings.phone_number_id])
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Processor
    final: list[Processor]
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks as data, without local variables (they may hold secrets or user data).
        final = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        # Plain tracebacks: no locals, and no line wrapping that could split a secret.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        final = []

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            _redact_event,
            renderer,
            _redact_rendered,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("released")
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    access = logging.getLogger("uvicorn.access")
    # ``uvicorn --no-access-log`` turns the access logger off before the app is imported;
    # capturing it below would turn it back on.
    access_off = not access.propagate and not access.handlers
    for name in _CAPTURED_LOGGERS:
        if name == "uvicorn.access" and access_off:
            continue
        # Their own handlers and levels go: LOG_LEVEL and our handler govern every line.
        captured = logging.getLogger(name)
        for old in list(captured.handlers):
            captured.removeHandler(old)
        captured.setLevel(logging.NOTSET)
        captured.propagate = True
    for existing in list(logging.root.manager.loggerDict.values()):
        # A dictConfig/fileConfig with disable_existing_loggers=True may have silenced them.
        if isinstance(existing, logging.Logger):
            existing.disabled = False
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
