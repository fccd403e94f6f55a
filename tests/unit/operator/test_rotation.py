"""Credential rotation: the pure schedule, state machine and Secret data of
``whatsapp_operator.rotation``, and the real driver ``whatsapp_operator.reconcile.rotate``.

The driver runs against an in-memory API server (``fake_kube``) and a fake PostgreSQL that
remembers each role's password; the operator "crashes" (an exception out of the step) before any
chosen write, inside or outside the cluster. Invariants checked at every write: a Secret that
pods can read never holds a database password that its role does not have yet; a restart neither
rotates twice nor loses a half-done rotation; nothing is revoked before the pods have rolled.
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
from whatsapp_operator.reconcile.parts import workloads
from whatsapp_operator.reconcile.pipeline import reconcile
from whatsapp_operator.reconcile.rotate import rotate_if_due

from .conftest import NS, ROLE_A, ROLE_B, World, agent_body, make_world, unb64
from .fake_kube import RecordedEvents

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
    assert not rot.is_due(step.after, T0 + INTERVAL - timedelta(seconds=1))
    assert rot.is_due(step.after, T0 + INTERVAL)


def test_never_rotates_before_next_rotation() -> None:
    state = rot.RotationState(interval=INTERVAL, last_rotation=T0, next_rotation=T0 + INTERVAL)
    for now in (T0, T0 + DAY, T0 + INTERVAL - timedelta(seconds=1)):
        step = rot.plan_rotation_step(state, now, pods_rolled=True)
        assert step.action is rot.RotationAction.NONE
        assert step.after.next_rotation == T0 + INTERVAL
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


# -- the real driver, with crashes ------------------------------------------------------------

#: The agents of these tests are created at this time (FakeKube's creationTimestamp), so their
#: first rotation is due at CREATED + INTERVAL.
CREATED = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
SECRET = "acme-credentials"


class Crash(Exception):
    """The operator process dies here."""


@dataclass
class Run:
    """One agent with a provisioned database, and what the test observes of its rotations."""

    world: World
    #: rotation ids of the Secret values written, in order (one per rotation)
    issued: list[str] = field(default_factory=list)
    #: database roles revoked, in order
    revoked: list[str] = field(default_factory=list)
    #: the Secret's rotationId that the pods run with
    pods_on: str | None = None
    #: crash before the n-th write (to Kubernetes or PostgreSQL) from now on
    crash_in: int | None = None

    def secret(self) -> dict[str, str]:
        return unb64(self.world.kube.obj("Secret", NS, SECRET)["data"])

    def status(self) -> dict[str, Any]:
        return self.world.status()

    def count_write(self) -> None:
        if self.crash_in is not None:
            if self.crash_in == 0:
                self.crash_in = None
                raise Crash
            self.crash_in -= 1


def start(monkeypatch: pytest.MonkeyPatch) -> Run:
    world = make_world(
        monkeypatch,
        postgres_admin_url="postgresql://admin:admin@pg:5432/postgres",
        postgres_host_for_pods="pg.shared",
    )
    run = Run(world)
    outside = world.outside

    def before_write(verb: str, key: tuple[str, str, str]) -> None:
        run.count_write()

    def after_write(verb: str, key: tuple[str, str, str]) -> None:
        if key != ("Secret", NS, SECRET):
            return
        data = run.secret()
        # Pods may read the Secret from now on: its database URL must work already.
        if keys.DATABASE_URL in data:
            creds = DatabaseCredentials.from_url(data[keys.DATABASE_URL])
            assert outside.roles.get(creds.role) == creds.password.get_secret_value(), (
                f"the Secret names role {creds.role} before PostgreSQL knows its password"
            )
        rotation_id = data.get(keys.ROTATION_ID)
        if rotation_id and rotation_id not in run.issued:
            run.issued.append(rotation_id)

    from whatsapp_operator import database

    set_password, revoke = database.set_role_password, database.revoke_role

    async def set_role_password(admin_url: str, role: str, password: str) -> None:
        run.count_write()
        await set_password(admin_url, role, password)

    async def revoke_role(admin_url: str, role: str) -> None:
        run.count_write()
        # Revocation only once the pods run the rotated Secret, and never of the role in use.
        assert run.pods_on == run.secret().get(keys.ROTATION_ID)
        assert role != run.secret()[keys.DATABASE_ROLE]
        run.revoked.append(role)
        await revoke(admin_url, role)

    monkeypatch.setattr(database, "set_role_password", set_role_password)
    monkeypatch.setattr(database, "revoke_role", revoke_role)
    world.kube.before_write = before_write
    world.kube.after_write = after_write
    world.kube.put(agent_body(database=None))
    return run


async def settle(run: Run) -> None:
    """A reconciliation and the controllers rolling the pods onto the current Secret."""
    await reconcile(run.world.agent(), retry=0)
    run.world.roll_out()
    await workloads.refresh(run.world.kube, NS, "acme", lambda body: RecordedEvents())
    run.pods_on = run.secret().get(keys.ROTATION_ID)


async def tick(run: Run, now: datetime, *, roll: bool, crash_in: int | None = None) -> None:
    """The pods roll (or not), then one timer tick at ``now``, maybe crashing."""
    if roll:
        await settle(run)
    run.crash_in = crash_in
    try:
        await rotate_if_due(run.world.agent(), now=now)
    finally:
        run.crash_in = None


async def test_full_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    run = start(monkeypatch)
    await settle(run)
    before = run.secret()
    assert before[keys.DATABASE_ROLE] == ROLE_A
    assert run.status()["nextRotation"] == "2026-03-02T00:00:00Z"
    await tick(run, CREATED + INTERVAL - DAY, roll=False)
    assert run.issued == []

    due = CREATED + INTERVAL
    await tick(run, due, roll=False)
    rotated = run.secret()
    assert run.issued == ["20260302T000000Z"]
    assert rotated[keys.DATABASE_ROLE] == ROLE_B
    assert rotated[keys.REDIS_PASSWORD_PREVIOUS] == before[keys.REDIS_PASSWORD]
    assert run.status()["rotation"]["phase"] == "Started"
    assert run.world.condition("CredentialsRotated")["reason"] == "RotationInProgress"
    assert run.world.condition("Ready")["status"] == "True"  # the agent keeps serving
    annotations = run.world.kube.obj("WhatsAppAgent", NS, "acme")["metadata"]["annotations"]
    assert "whatsapp.released.io/reconcile-requested" in annotations

    await tick(run, due + timedelta(minutes=1), roll=False)  # pods not rolled yet: wait
    assert run.revoked == [] and run.issued == ["20260302T000000Z"]

    await tick(run, due + timedelta(minutes=2), roll=True)
    assert run.revoked == [ROLE_A]
    final = run.secret()
    assert not set(keys.PREVIOUS_KEYS) & set(final)
    status = run.status()
    assert status["rotation"]["phase"] == "Idle"
    assert status["lastRotation"] == "2026-03-02T00:00:00Z"
    assert status["nextRotation"] == "2026-05-01T00:00:00Z"
    assert run.world.condition("CredentialsRotated")["reason"] == "Rotated"


async def test_the_role_knows_its_password_before_pods_can_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rotated database URL reaches the Secret only after PostgreSQL accepts it; a crash
    in between leaves the Secret on the old, working role."""
    for crash_in in range(4):
        run = start(monkeypatch)
        await settle(run)
        with contextlib.suppress(Crash):
            await tick(run, CREATED + INTERVAL, roll=False, crash_in=crash_in)
        data = run.secret()
        creds = DatabaseCredentials.from_url(data[keys.DATABASE_URL])
        assert run.world.outside.roles[creds.role] == creds.password.get_secret_value()


@pytest.mark.parametrize("crash_in", range(6))
async def test_crash_during_start_resumes_without_rotating_twice(
    monkeypatch: pytest.MonkeyPatch, crash_in: int
) -> None:
    run = start(monkeypatch)
    await settle(run)
    due = CREATED + INTERVAL
    with contextlib.suppress(Crash):
        await tick(run, due, roll=False, crash_in=crash_in)
    # Restarted: the pods may even look "rolled" (onto the old Secret).
    for minute in range(1, 4):
        await tick(run, due + timedelta(minutes=minute), roll=False)
    assert len(run.issued) == 1 and run.revoked == []
    assert run.status()["rotation"]["phase"] == "Started"
    await tick(run, due + timedelta(minutes=5), roll=True)
    assert run.revoked == [ROLE_A]
    assert run.status()["rotation"]["phase"] == "Idle"
    assert len(run.issued) == 1


@pytest.mark.parametrize("crash_in", range(6))
async def test_crash_during_finish_resumes(monkeypatch: pytest.MonkeyPatch, crash_in: int) -> None:
    run = start(monkeypatch)
    await settle(run)
    due = CREATED + INTERVAL
    await tick(run, due, roll=False)
    with contextlib.suppress(Crash):
        await tick(run, due + timedelta(minutes=1), roll=True, crash_in=crash_in)
    await tick(run, due + timedelta(minutes=2), roll=True)
    await tick(run, due + timedelta(minutes=3), roll=True)
    assert run.status()["rotation"]["phase"] == "Idle"
    assert set(run.revoked) == {ROLE_A}
    assert not set(keys.PREVIOUS_KEYS) & set(run.secret())
    assert len(run.issued) == 1


async def test_a_failing_database_is_reported_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from whatsapp_operator.errors import TemporaryError

    run = start(monkeypatch)
    await settle(run)
    run.world.outside.database_error = TemporaryError(
        "cannot reach PostgreSQL", reason="DatabaseUnavailable"
    )
    agent = run.world.agent()
    await rotate_if_due(agent, now=CREATED + INTERVAL)
    assert agent.events.reasons() == ["RotationStarted", "RotationFailed"]
    cond = run.world.condition("CredentialsRotated")
    assert (cond["reason"], cond["message"]) == ("RotationInProgress", "cannot reach PostgreSQL")
    assert run.secret()[keys.DATABASE_ROLE] == ROLE_A  # nothing pods can read
    run.world.outside.database_error = None
    await tick(run, CREATED + INTERVAL + timedelta(minutes=1), roll=False)
    await tick(run, CREATED + INTERVAL + timedelta(minutes=2), roll=True)
    assert run.status()["rotation"]["phase"] == "Idle" and len(run.issued) == 1


async def test_a_blocked_or_unparsable_agent_is_not_rotated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = start(monkeypatch)
    body = run.world.kube.obj("WhatsAppAgent", NS, "acme")
    body["status"] = {
        "nextRotation": "2020-01-01T00:00:00Z",
        "conditions": [{"type": "Ready", "status": "False", "reason": "SecretNotFound"}],
    }
    run.world.kube.put(body)
    await rotate_if_due(run.world.agent(), now=CREATED + INTERVAL)
    body["status"] = {"nextRotation": "2020-01-01T00:00:00Z"}
    body["spec"] = {"phoneNumberId": 12}
    run.world.kube.put(body)
    await rotate_if_due(run.world.agent(), now=CREATED + INTERVAL)
    assert run.world.kube.writes == [] and run.issued == []


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40 * 24 * 60),  # minutes to wait
            st.booleans(),  # pods roll before this tick
            st.one_of(st.none(), st.integers(min_value=0, max_value=6)),  # crash before write n
        ),
        min_size=1,
        max_size=12,
    )
)
def test_random_runs_keep_the_invariants(events: list[tuple[int, bool, int | None]]) -> None:
    import asyncio

    with pytest.MonkeyPatch.context() as monkeypatch:
        asyncio.run(_random_run(monkeypatch, events))


async def _random_run(
    monkeypatch: pytest.MonkeyPatch, events: list[tuple[int, bool, int | None]]
) -> None:
    run = start(monkeypatch)
    await settle(run)
    now = CREATED
    for minutes, roll, crash_in in events:
        now += timedelta(minutes=minutes)
        with contextlib.suppress(Crash):
            await tick(run, now, roll=roll, crash_in=crash_in)
        # At most one rotation issued per interval since the agent was created.
        assert len(run.issued) <= (now - CREATED) // INTERVAL
        # The current and the standby role alternate.
        previous = run.secret().get(keys.DATABASE_ROLE_PREVIOUS)
        if previous is not None:
            assert previous == other_role(run.secret()[keys.DATABASE_ROLE])
    # Whatever happened, calm ticks with rolling pods finish any rotation in progress.
    for extra in range(1, 4):
        await tick(run, now + timedelta(seconds=extra), roll=True)
    assert run.status().get("rotation", {}).get("phase", "Idle") == "Idle"
    assert not set(keys.PREVIOUS_KEYS) & set(run.secret())
