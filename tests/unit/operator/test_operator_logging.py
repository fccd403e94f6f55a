"""The operator's log: no line per API request; ``--verbose`` adds kopf's debug lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from whatsapp_operator.__main__ import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_requests_are_left_out(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json")
    logging.getLogger("httpx2").info('HTTP Request: GET https://k8s/api/v1 "HTTP/1.1 200 OK"')
    logging.getLogger("kopf.objects").info("Handler 'reconcile' succeeded.")
    logging.getLogger("httpx2").warning("connection pool is full")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Handler 'reconcile' succeeded." in text
    assert "HTTP Request" not in text
    assert "connection pool is full" in text  # a client's warnings are still logged


def test_verbose_adds_debug_lines(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("plain", verbose=True)
    logging.getLogger("kopf.objects").debug("Handler 'reconcile' is invoked.")
    out = capsys.readouterr()
    assert "Handler 'reconcile' is invoked." in out.out + out.err
