"""When the per-agent timer has work to do (``reconcile.schedule``): decided from the body and
the checks' bookkeeping, with no request."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from whatsapp_operator.config import OperatorSettings
from whatsapp_operator.reconcile import checks, schedule

from .conftest import agent_body

UID = "uid-schedule"
NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
SETTINGS = OperatorSettings(check_interval=600.0, handover_count_interval=60.0)


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    yield
    checks.forget(UID)


def settled(**spec: Any) -> dict[str, Any]:
    """An agent rolled out, rotated an hour ago (the default interval: 60 days)."""
    body = agent_body(**spec)
    body["metadata"]["uid"] = UID
    body["status"] = {
        "observedGeneration": 1,
        "conditions": [{"type": "WorkloadsReady", "status": "True"}],
        "lastRotation": "2026-12-03T11:00:00Z",
        "nextRotation": "2027-02-01T11:00:00Z",
    }
    return body


def due(body: dict[str, Any], now: float = 1000.0, settings: OperatorSettings = SETTINGS) -> bool:
    return schedule.work_due(body, settings, now=now, wall=NOW)


def test_a_settled_agent_checked_lately_has_nothing_due() -> None:
    body = settled()
    checks.mark_checked(UID, now=900.0)
    assert not due(body)
    # The check comes due one interval after the last one.
    assert due(body, now=900.0 + SETTINGS.check_interval)


def test_a_rollout_under_way_is_due() -> None:
    body = settled()
    checks.mark_checked(UID, now=900.0)
    body["status"]["conditions"] = [{"type": "WorkloadsReady", "status": "False"}]
    assert due(body)
    body["status"]["conditions"] = []
    assert due(body)


def test_an_agent_before_its_first_pass_waits_for_it() -> None:
    body = settled()
    body["status"] = {}
    assert not due(body)  # its first check is due one interval after it was first seen
    assert due(body, now=1000.0 + SETTINGS.check_interval)


def test_held_conversations_are_counted_only_where_there_is_something_to_count() -> None:
    checks.mark_checked(UID, now=900.0)
    # Its own database, no spec.handover, no shared PostgreSQL: nothing to count.
    assert not due(settled())
    # spec.handover asks for a count: due at once, then once per interval.
    handing_over = settled(handover={"message": "A person will answer."})
    assert due(handing_over)
    assert checks.held_due(UID, SETTINGS.handover_count_interval, now=1000.0)  # the tick counts
    assert not due(handing_over, now=1030.0)
    assert due(handing_over, now=1060.0)
    # A shared PostgreSQL: every agent whose database the operator provisioned is counted
    # (the first time at once).
    checks.forget(UID)
    checks.mark_checked(UID, now=900.0)
    shared = SETTINGS.model_copy(update={"postgres_admin_url": "postgresql://admin:pw@db/x"})
    assert not due(settled(database=None), now=1060.0)
    assert due(settled(database=None), now=1060.0, settings=shared)


def test_without_handover_or_holds_the_count_comes_with_the_checks() -> None:
    shared = SETTINGS.model_copy(update={"postgres_admin_url": "postgresql://admin:pw@db/x"})
    body = settled(database=None)
    checks.mark_checked(UID, now=900.0)
    assert checks.held_due(UID, 60.0, now=1000.0)  # counted: nothing held
    # No spec.handover and nothing held: counted again once per check interval, not per minute.
    assert not due(body, now=1100.0, settings=shared)
    assert due(body, now=1000.0 + SETTINGS.check_interval, settings=shared)
    # Staff hold a conversation (the count found it): counted every minute until it ends.
    body["status"]["handover"] = {"held": 1}
    assert due(body, now=1100.0, settings=shared)


def test_a_rotation_is_due_when_its_time_has_come_or_it_is_under_way() -> None:
    body = settled()
    checks.mark_checked(UID, now=900.0)
    # The status says when: each pass writes nextRotation from the spec's interval.
    body["status"]["nextRotation"] = "2026-12-03T11:59:59Z"
    assert due(body)
    body["status"]["nextRotation"] = "2026-12-03T12:00:01Z"
    assert not due(body)
    body["status"]["rotation"] = {
        "phase": "Started",
        "rotationId": "r1",
        "startedAt": "2026-12-03T11:59:00Z",
    }
    assert due(body)


def test_a_deleted_agent_has_nothing_due() -> None:
    body = settled()
    body["status"]["conditions"] = []
    body["metadata"]["deletionTimestamp"] = "2026-12-03T12:00:00Z"
    assert not due(body)
