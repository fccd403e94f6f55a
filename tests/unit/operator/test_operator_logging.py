"""The operator's log: no line per API request, no routine line per agent per minute."""

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


def test_routine_lines_and_requests_are_left_out(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json")
    objects = logging.getLogger("kopf.objects")
    objects.info("Timer 'periodic' succeeded.")
    objects.info("Handler 'workloads' succeeded.")
    logging.getLogger("httpx2").info('HTTP Request: GET https://k8s/api/v1 "HTTP/1.1 200 OK"')
    objects.info("Handler 'reconcile' succeeded.")
    objects.error("Timer 'periodic' succeeded.")  # never at a level above INFO
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Handler 'reconcile' succeeded." in text
    assert "Handler 'workloads'" not in text and "HTTP Request" not in text
    assert text.count("Timer 'periodic' succeeded.") == 1


def test_verbose_keeps_the_routine_lines(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("plain", verbose=True)
    logging.getLogger("kopf.objects").info("Timer 'periodic' succeeded.")
    out = capsys.readouterr()
    assert "Timer 'periodic' succeeded." in out.out + out.err
