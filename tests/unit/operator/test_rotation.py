"""Pure tests of ``whatsapp_operator.rotation``: schedule, state machine, Secret data.

A small simulator plays the handler's loop (record ``before``, act, record ``after``) against a
status dict and a Secret dict, and can "crash" the operator at any point in between, to show
that a restart neither rotates twice nor loses a half-done rotation, and that nothing is revoked
before the pods have rolled.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from whatsapp_operator import credentials as keys
from whatsapp_operator import rotation as rot
from whatsapp_operator.database import DatabaseCredentials, other_role

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
INTERVAL = timedelta(days=60)
DB_URL = "postgresql://released_shop_acme_a:pw0@pg.shared:5432/released_shop_acme"


def _secret() -> dict[str, str]:
    return {
        keys.REDIS_PASSWORD: "redis0",
        keys.VERIFY_TOKEN: "verify0",
        keys.DATABASE_URL: DB_URL,
        keys.DATABASE_ROLE: "released_shop_acme_a",
    }


# -- schedule -------------------------------------------------------------------------------


def test_next_rotation() -> None:
    assert rot.next_rotation(None, INTERVAL, T0) == T0 + INTERVAL
    assert rot.next_rotation(T0 - DAY, INTERVAL, T0) == T0 - DAY + INTERVAL
    naive = datetime(2026, 1, 1, 12, 0)
    assert rot.next_rotation(naive, INTERVAL, T0) == T0 + INTERVAL
    with pytest.raises(ValueError):
        rot.next_rotation(None, timedelta(0), T0)


def test_fresh_agent_is_scheduled_not_rotated() -> None:
    step = rot.plan_rotation_step(rot.RotationState(interval=INTERVAL), T0, pods_rolled=True)
    assert step.action is rot.RotationAction.NONE and step.before is None
    assert step.after.next_rotation == T0 + INTERVAL
    assert step.after.phase is rot.RotationPhase.IDLE
    assert step.requeue_after == INTERVAL
    assert not rot.is_due(step.after, T0 + INTERVAL - timedelta(seconds=1))
    assert rot.is_due(step.after, T0 + INTERVAL)


def test_never_rotates_before_next_rotation() -> None:
    state = rot.RotationState(interval=INTERVAL, last_rotation=T0, next_rotation=T0 + INTERVAL)
    for now in (T0, T0 + DAY, T0 + INTERVAL - timedelta(seconds=1)):
        step = rot.plan_rotation_step(state, now, pods_rolled=True)
        assert step.action is rot.RotationAction.NONE
        assert step.requeue_after == T0 + INTERVAL - now
    step = rot.plan_rotation_step(state, T0 + INTERVAL, pods_rolled=True)
    assert step.action is rot.RotationAction.ROTATE
    assert step.before is not None and step.before.phase is rot.RotationPhase.STARTED
    assert step.before.rotation_id == rot.rotation_id_for(T0 + INTERVAL) == "20260302T120000Z"
    assert step.after == step.before


def test_interval_change_applies_to_the_schedule() -> None:
    state = rot.RotationState(
        interval=timedelta(days=7), last_rotation=T0, next_rotation=T0 + INTERVAL
    )
    step = rot.plan_rotation_step(state, T0 + DAY, pods_rolled=True)
    assert step.after.next_rotation == T0 + timedelta(days=7)
    assert rot.plan_rotation_step(state, T0 + timedelta(days=7), True).action is (
        rot.RotationAction.ROTATE
    )


def test_started_waits_for_pods_then_revokes() -> None:
    started = rot.RotationState(
        interval=INTERVAL,
        phase=rot.RotationPhase.STARTED,
        rotation_id="r1",
        started_at=T0,
        last_rotation=T0 - INTERVAL,
    )
    waiting = rot.plan_rotation_step(started, T0 + timedelta(minutes=5), pods_rolled=False)
    assert waiting.action is rot.RotationAction.ROTATE
    assert waiting.before is None and waiting.after == started
    assert waiting.requeue_after == rot.ROLLOUT_POLL

    done = rot.plan_rotation_step(started, T0 + timedelta(minutes=10), pods_rolled=True)
    assert done.action is rot.RotationAction.REVOKE
    assert done.before is not None and done.before.phase is rot.RotationPhase.FINISHING
    assert done.after.phase is rot.RotationPhase.IDLE
    assert done.after.last_rotation == T0
    assert done.after.next_rotation == T0 + INTERVAL
    assert done.after.started_at is None


def test_rolled_onto_the_old_secret_is_not_rolled() -> None:
    started = rot.RotationState(phase=rot.RotationPhase.STARTED, rotation_id="r2", started_at=T0)
    step = rot.plan_rotation_step(started, T0, pods_rolled=True, secret_rotation_id="r1")
    assert step.action is rot.RotationAction.ROTATE
    step = rot.plan_rotation_step(started, T0, pods_rolled=True, secret_rotation_id="r2")
    assert step.action is rot.RotationAction.REVOKE


def test_finishing_after_restart_revokes_again() -> None:
    finishing = rot.RotationState(
        phase=rot.RotationPhase.FINISHING, rotation_id="r1", started_at=T0
    )
    for rolled in (True, False):
        step = rot.plan_rotation_step(finishing, T0 + DAY, pods_rolled=rolled)
        assert step.action is rot.RotationAction.REVOKE and step.before is None
        assert step.after.phase is rot.RotationPhase.IDLE


def test_status_roundtrip_and_broken_status() -> None:
    state = rot.RotationState(
        interval=INTERVAL,
        phase=rot.RotationPhase.STARTED,
        rotation_id="r1",
        started_at=T0,
        last_rotation=T0 - INTERVAL,
        next_rotation=T0,
    )
    status = state.to_status()
    assert status == {
        "rotation": {"phase": "Started", "rotationId": "r1", "startedAt": "2026-01-01T12:00:00Z"},
        "lastRotation": "2025-11-02T12:00:00Z",
        "nextRotation": "2026-01-01T12:00:00Z",
    }
    assert rot.RotationState.from_status(status, INTERVAL) == state
    broken = rot.RotationState.from_status({"rotation": {"phase": "Started"}}, INTERVAL)
    assert broken.phase is rot.RotationPhase.IDLE
    unknown = rot.RotationState.from_status({"rotation": {"phase": "Exploded"}})
    assert unknown.phase is rot.RotationPhase.IDLE
    assert rot.RotationState.from_status(None) == rot.RotationState()
    idle = rot.RotationState(last_rotation=T0, next_rotation=T0 + INTERVAL).to_status()
    assert idle["rotation"]["startedAt"] is None  # a merge patch clears it
    assert rot.is_due({"nextRotation": "2026-01-01T12:00:00Z"}, T0)
    assert not rot.is_due({}, T0)


# -- Secret data ----------------------------------------------------------------------------


def test_initial_and_complete_secret_data() -> None:
    data = rot.initial_secret_data()
    assert set(data) == {keys.REDIS_PASSWORD, keys.VERIFY_TOKEN}
    assert (
        len(data[keys.REDIS_PASSWORD]) >= 40
        and data[keys.REDIS_PASSWORD] != data[keys.VERIFY_TOKEN]
    )
    creds = DatabaseCredentials.from_url(DB_URL)
    completed = rot.complete_secret_data(data, creds)
    assert completed[keys.REDIS_PASSWORD] == data[keys.REDIS_PASSWORD]
    assert completed[keys.DATABASE_URL] == DB_URL
    assert completed[keys.DATABASE_ROLE] == "released_shop_acme_a"
    assert rot.complete_secret_data(completed) == completed


def test_generate_rotated_and_finalize() -> None:
    current = _secret()
    rotated = rot.generate_rotated_secret_data(current, "r1")
    assert rotated[keys.REDIS_PASSWORD_PREVIOUS] == "redis0"
    assert rotated[keys.VERIFY_TOKEN_PREVIOUS] == "verify0"
    assert rotated[keys.REDIS_PASSWORD] not in ("redis0", "")
    assert rotated[keys.VERIFY_TOKEN] not in ("verify0", "")
    assert rotated[keys.DATABASE_ROLE] == "released_shop_acme_b"
    assert rotated[keys.DATABASE_ROLE_PREVIOUS] == "released_shop_acme_a"
    new_db = DatabaseCredentials.from_url(rotated[keys.DATABASE_URL])
    assert new_db.role == "released_shop_acme_b"
    assert new_db.password.get_secret_value() != "pw0"
    assert (new_db.host, new_db.port, new_db.database) == ("pg.shared", 5432, "released_shop_acme")
    assert rotated[keys.ROTATION_ID] == "r1"
    assert current == _secret()  # input untouched

    # Idempotent for the same rotation id (a restart re-runs the step).
    assert rot.generate_rotated_secret_data(rotated, "r1") == rotated

    final = rot.finalize_secret_data(rotated)
    assert not set(keys.PREVIOUS_KEYS) & set(final)
    assert final[keys.REDIS_PASSWORD] == rotated[keys.REDIS_PASSWORD]
    assert final[keys.ROTATION_ID] == "r1"

    # The next rotation goes back to role A.
    again = rot.generate_rotated_secret_data(final, "r2")
    assert again[keys.DATABASE_ROLE] == "released_shop_acme_a"
    assert again[keys.REDIS_PASSWORD_PREVIOUS] == final[keys.REDIS_PASSWORD]


def test_rotation_without_database() -> None:
    rotated = rot.generate_rotated_secret_data(
        {keys.REDIS_PASSWORD: "r", keys.VERIFY_TOKEN: "v"}, "r1"
    )
    assert keys.DATABASE_URL not in rotated and keys.DATABASE_ROLE_PREVIOUS not in rotated


def test_meta_registration_repr_hides_token() -> None:
    meta = rot.MetaRegistration("http://g/v23.0", "123", "EAAsecrettoken", "https://h/webhook")
    assert "EAAsecrettoken" not in repr(meta)


# -- the handler loop, with crashes ---------------------------------------------------------


@dataclass
class World:
    """What survives a crash: the agent status and the Secret (plus what we observe)."""

    status: dict[str, Any] = field(default_factory=dict)
    secret: dict[str, str] = field(default_factory=_secret)
    #: rotation ids whose credentials were issued, in order
    issued: list[str] = field(default_factory=list)
    #: database roles revoked, in order
    revoked: list[str] = field(default_factory=list)
    #: the secret's rotationId that the pods currently run with
    pods_on: str | None = None


class Crash(Exception):
    pass


def run_once(world: World, now: datetime, *, roll: bool, crash_at: int | None) -> rot.RotationStep:
    """One reconciliation, as the handler does it; ``crash_at`` stops it at point 0..3."""

    def point(n: int) -> None:
        if crash_at == n:
            raise Crash

    state = rot.RotationState.from_status(world.status, INTERVAL)
    if roll:
        world.pods_on = world.secret.get(keys.ROTATION_ID)
    pods_rolled = world.pods_on == world.secret.get(keys.ROTATION_ID)
    step = rot.plan_rotation_step(
        state, now, pods_rolled, secret_rotation_id=world.secret.get(keys.ROTATION_ID)
    )
    point(0)
    if step.before is not None:
        world.status.update(step.before.to_status())
    point(1)
    if step.action is rot.RotationAction.ROTATE:
        rotation_id = step.after.rotation_id
        assert rotation_id is not None
        new = rot.generate_rotated_secret_data(world.secret, rotation_id)
        if new != world.secret:
            world.issued.append(rotation_id)
        world.secret = new
    elif step.action is rot.RotationAction.REVOKE:
        # Revocation only ever happens once the pods run the rotated Secret.
        assert world.pods_on == world.secret.get(keys.ROTATION_ID) or state.phase is (
            rot.RotationPhase.FINISHING
        )
        previous = world.secret.get(keys.DATABASE_ROLE_PREVIOUS)
        if previous:
            assert world.pods_on == world.secret[keys.ROTATION_ID]
            assert previous != world.secret[keys.DATABASE_ROLE]  # never the role in use
            world.revoked.append(previous)
    point(2)
    if step.action is rot.RotationAction.REVOKE:
        world.secret = rot.finalize_secret_data(world.secret)
    point(3)
    world.status.update(step.after.to_status())
    return step


def test_full_cycle_without_crash() -> None:
    world = World()
    assert run_once(world, T0, roll=True, crash_at=None).action is rot.RotationAction.NONE
    due = T0 + INTERVAL
    step = run_once(world, due, roll=False, crash_at=None)
    assert step.action is rot.RotationAction.ROTATE and world.issued == ["20260302T120000Z"]
    assert world.secret[keys.DATABASE_ROLE] == "released_shop_acme_b"
    run_once(world, due + timedelta(minutes=1), roll=False, crash_at=None)
    assert world.revoked == [] and len(world.issued) == 1
    step = run_once(world, due + timedelta(minutes=2), roll=True, crash_at=None)
    assert step.action is rot.RotationAction.REVOKE
    assert world.revoked == ["released_shop_acme_a"]
    assert not set(keys.PREVIOUS_KEYS) & set(world.secret)
    assert world.status["rotation"]["phase"] == "Idle"
    assert world.status["lastRotation"] == "2026-03-02T12:00:00Z"
    assert world.status["nextRotation"] == "2026-05-01T12:00:00Z"
    assert run_once(world, due + DAY, roll=True, crash_at=None).action is rot.RotationAction.NONE


@pytest.mark.parametrize("crash_at", [0, 1, 2, 3])
def test_crash_during_start_resumes_without_rotating_twice(crash_at: int) -> None:
    world = World(
        status=rot.RotationState(last_rotation=T0, next_rotation=T0 + INTERVAL).to_status()
    )
    due = T0 + INTERVAL
    with pytest.raises(Crash):
        run_once(world, due, roll=True, crash_at=crash_at)
    # Restart a minute later: the pods may even look "rolled" (onto the old Secret).
    for minute in range(1, 4):
        run_once(world, due + timedelta(minutes=minute), roll=False, crash_at=None)
    assert len(world.issued) == 1 and world.revoked == []
    assert world.status["rotation"]["phase"] == "Started"
    run_once(world, due + timedelta(minutes=5), roll=True, crash_at=None)
    assert world.revoked == ["released_shop_acme_a"]
    assert world.status["rotation"]["phase"] == "Idle"
    assert len(world.issued) == 1


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_crash_during_finish_resumes(crash_at: int) -> None:
    world = World(
        status=rot.RotationState(last_rotation=T0, next_rotation=T0 + INTERVAL).to_status()
    )
    due = T0 + INTERVAL
    run_once(world, due, roll=False, crash_at=None)
    with pytest.raises(Crash):
        run_once(world, due + timedelta(minutes=1), roll=True, crash_at=crash_at)
    assert world.status["rotation"]["phase"] == "Finishing"
    step = run_once(world, due + timedelta(minutes=2), roll=False, crash_at=None)
    assert step.action is rot.RotationAction.REVOKE
    assert world.status["rotation"]["phase"] == "Idle"
    assert set(world.revoked) == {"released_shop_acme_a"}
    assert not set(keys.PREVIOUS_KEYS) & set(world.secret)
    assert len(world.issued) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40 * 24 * 60),  # minutes to wait
            st.booleans(),  # pods roll before this reconciliation
            st.one_of(st.none(), st.integers(min_value=0, max_value=3)),  # crash point
        ),
        min_size=1,
        max_size=40,
    )
)
def test_random_runs_keep_the_invariants(events: list[tuple[int, bool, int | None]]) -> None:
    world = World()
    now = T0
    for minutes, roll, crash_at in events:
        now += timedelta(minutes=minutes)
        with contextlib.suppress(Crash):
            run_once(world, now, roll=roll, crash_at=crash_at)
        # At most one rotation issued per interval (from the first schedule at T0).
        assert len(world.issued) <= (now - T0) // INTERVAL
        # The current and the standby role alternate.
        previous = world.secret.get(keys.DATABASE_ROLE_PREVIOUS)
        if previous is not None:
            assert previous == other_role(world.secret[keys.DATABASE_ROLE])
    # Whatever happened, calm reconciliations finish any rotation in progress.
    for extra in range(1, 4):
        run_once(world, now + timedelta(seconds=extra), roll=True, crash_at=None)
    assert world.status["rotation"]["phase"] == "Idle"
    assert not set(keys.PREVIOUS_KEYS) & set(world.secret)
