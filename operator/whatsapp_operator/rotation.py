"""Credential rotation: the schedule, a restart-safe two-phase state machine, and its steps.

What rotates, every ``spec.rotation.interval`` (default 60 days): the Redis password, the
webhook verify token, the admin API's token and, for provisioned databases, the PostgreSQL login
role (the ``safetyIdentifierSalt`` does not: OpenAI would see every conversation as new). All
live in the ``NAME-credentials`` Secret under the keys of :mod:`whatsapp_operator.credentials`.

The state lives in the agent's status (``lastRotation``, ``nextRotation`` and
``rotation: {phase, rotationId, startedAt}``), so an operator restart neither rotates twice nor
loses a half-done rotation::

    Idle ──due──▶ Started ──pods rolled──▶ Finishing ──revoked──▶ Idle (lastRotation, nextRotation)

- **Idle → Started** (action ``ROTATE``): the driver first records ``Started`` with a rotation
  id, then computes :func:`generate_rotated_secret_data` (idempotent for a given rotation id):
  new current values, the old ones kept as ``...Previous`` keys. It gives the standby
  PostgreSQL role the new password and LOGIN (:func:`apply_rotated_credentials`) *before*
  writing the Secret, so no pod ever holds a database URL that does not work yet, and then
  writes the Secret. The Redis server loads both passwords without a restart (its pod's
  ``acl-reload`` container, see :mod:`whatsapp_operator.builders.workloads`); the web tier
  accepts both verify tokens (``META_VERIFY_TOKEN_PREVIOUS``) and both admin tokens
  (``ADMIN_TOKEN_PREVIOUS``). Web and worker pods roll because their checksum changed, and a
  new pod is Ready only once Redis accepts its password.
- **Started** while pods have not rolled: ``ROTATE`` again (re-applies idempotently; this is
  how a rotation interrupted by a restart resumes).
- **Started → Finishing** once every pod runs the rotated Secret (action ``REVOKE``): the
  driver records ``Finishing``, then :func:`revoke_previous_credentials` registers the new
  verify token with Meta (only now: Meta verifies the callback with the token, which the web
  tier accepts only after rolling), revokes the previous PostgreSQL role, and the driver writes
  :func:`finalize_secret_data` (previous values dropped), then records ``Idle`` with
  ``lastRotation``/``nextRotation``. ``Finishing`` after a restart simply does ``REVOKE`` again.

:func:`plan_rotation_step` is pure: state, clock and "have the pods rolled" in, a
:class:`RotationStep` out (what to record before acting, what to do, what to record after).
:mod:`whatsapp_operator.reconcile.rotate` drives it, one step per timer tick.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from whatsapp_operator import database, meta_webhook
from whatsapp_operator.credentials import (
    ADMIN_TOKEN,
    ADMIN_TOKEN_PREVIOUS,
    DATABASE_ROLE,
    DATABASE_ROLE_PREVIOUS,
    DATABASE_URL,
    PREVIOUS_KEYS,
    REDIS_PASSWORD,
    REDIS_PASSWORD_PREVIOUS,
    ROTATION_ID,
    VERIFY_TOKEN,
    VERIFY_TOKEN_PREVIOUS,
)

DEFAULT_INTERVAL = timedelta(days=60)


class RotationPhase(StrEnum):
    IDLE = "Idle"
    STARTED = "Started"
    FINISHING = "Finishing"


class RotationAction(StrEnum):
    #: Nothing to do now (maybe a status update: see ``RotationStep.after``).
    NONE = "None"
    #: Write the rotated Secret (idempotent per rotation id) and apply it outside the cluster.
    ROTATE = "Rotate"
    #: Register the new verify token, revoke the previous role, drop ``...Previous`` keys.
    REVOKE = "Revoke"


# -- time -----------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and whole seconds, as Kubernetes writes times."""
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """A status time (RFC 3339 string or datetime) as an aware UTC datetime; None if unusable."""
    if isinstance(value, datetime):
        return _utc(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def rotation_id_for(now: datetime) -> str:
    """The id of a rotation started at ``now`` (``20260101T120000Z``)."""
    return _utc(now).strftime("%Y%m%dT%H%M%SZ")


def next_rotation(last: datetime | None, interval: timedelta, now: datetime) -> datetime:
    """When the next rotation is due: ``last + interval``, or ``now + interval`` if never."""
    if interval <= timedelta(0):
        raise ValueError("the rotation interval must be positive")
    return _utc(last) + interval if last is not None else _utc(now) + interval


# -- state ----------------------------------------------------------------------------------


class RotationState(BaseModel):
    """The rotation part of an agent's status, plus the interval from its spec."""

    model_config = ConfigDict(frozen=True)

    phase: RotationPhase = RotationPhase.IDLE
    interval: timedelta = DEFAULT_INTERVAL
    last_rotation: datetime | None = None
    next_rotation: datetime | None = None
    rotation_id: str | None = None
    started_at: datetime | None = None

    @classmethod
    def from_status(
        cls, status: Mapping[str, Any] | None, interval: timedelta = DEFAULT_INTERVAL
    ) -> RotationState:
        """Read ``lastRotation``, ``nextRotation`` and ``rotation`` from an agent's status."""
        status = status or {}
        rotation = status.get("rotation") or {}
        try:
            phase = RotationPhase(rotation.get("phase") or RotationPhase.IDLE)
        except ValueError:
            phase = RotationPhase.IDLE
        rotation_id = rotation.get("rotationId") or None
        started_at = parse_time(rotation.get("startedAt"))
        if phase is not RotationPhase.IDLE and (rotation_id is None or started_at is None):
            phase = RotationPhase.IDLE  # unusable record: start over rather than guess
        return cls(
            phase=phase,
            interval=interval,
            last_rotation=parse_time(status.get("lastRotation")),
            next_rotation=parse_time(status.get("nextRotation")),
            rotation_id=str(rotation_id) if rotation_id else None,
            started_at=started_at,
        )

    def to_status(self) -> dict[str, Any]:
        """The status patch: ``lastRotation``, ``nextRotation``, ``rotation`` (None clears)."""
        patch: dict[str, Any] = {
            "rotation": {
                "phase": self.phase.value,
                "rotationId": self.rotation_id,
                "startedAt": format_time(self.started_at) if self.started_at else None,
            }
        }
        if self.last_rotation is not None:
            patch["lastRotation"] = format_time(self.last_rotation)
        if self.next_rotation is not None:
            patch["nextRotation"] = format_time(self.next_rotation)
        return patch

    def due_at(self) -> datetime | None:
        """When an idle agent is next due (an interval change applies at once)."""
        if self.last_rotation is not None:
            return next_rotation(self.last_rotation, self.interval, self.last_rotation)
        return self.next_rotation


def is_due(state: RotationState | Mapping[str, Any], now: datetime) -> bool:
    """Whether :func:`plan_rotation_step` has rotation work to do at ``now``: a rotation in
    progress, or an idle agent whose ``nextRotation`` has come. (A ``Mapping`` is read as an
    agent status with the default interval.)"""
    if not isinstance(state, RotationState):
        state = RotationState.from_status(state)
    if state.phase is not RotationPhase.IDLE:
        return True
    due = state.due_at()
    return due is not None and _utc(now) >= due


class _Unset(Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET


class RotationStep(BaseModel):
    """What the driver does now: record ``before`` (if any), do ``action``, record ``after``."""

    model_config = ConfigDict(frozen=True)

    action: RotationAction
    before: RotationState | None = None
    after: RotationState
    message: str = ""


def plan_rotation_step(
    state: RotationState,
    now: datetime,
    pods_rolled: bool,
    *,
    secret_rotation_id: str | _Unset | None = UNSET,
) -> RotationStep:
    """The next rotation step (pure).

    ``pods_rolled``: the web and worker pods run the current Secret, rolled out and Ready.
    ``secret_rotation_id``: the Secret's ``rotationId`` (None when it has none). When given and
    not this rotation's id, the rotated Secret was never written (the operator stopped between
    recording ``Started`` and writing it), so the step is ``ROTATE`` whatever ``pods_rolled``
    says. The driver always passes it; without it ``pods_rolled`` must already mean "rolled
    onto the Secret of this rotation".

    Never rotates before the due time, resumes a started rotation, and revokes only after the
    pods have rolled onto the rotated Secret.
    """
    now = _utc(now)
    if state.phase is RotationPhase.IDLE:
        due = state.due_at()
        if due is None:
            scheduled = state.model_copy(update={"next_rotation": now + state.interval})
            return RotationStep(
                action=RotationAction.NONE,
                after=scheduled,
                message="first rotation scheduled",
            )
        if now < due:
            return RotationStep(
                action=RotationAction.NONE,
                after=state.model_copy(update={"next_rotation": due}),
                message="not due yet",
            )
        started = state.model_copy(
            update={
                "phase": RotationPhase.STARTED,
                "rotation_id": rotation_id_for(now),
                "started_at": now,
            }
        )
        return RotationStep(
            action=RotationAction.ROTATE,
            before=started,
            after=started,
            message="rotation started: new credentials issued, previous ones still accepted",
        )

    applied = secret_rotation_id is UNSET or secret_rotation_id == state.rotation_id
    if state.phase is RotationPhase.STARTED and not (pods_rolled and applied):
        return RotationStep(
            action=RotationAction.ROTATE,
            after=state,
            message="waiting for the pods to roll onto the new credentials",
        )

    started_at = state.started_at or now
    finished = state.model_copy(
        update={
            "phase": RotationPhase.IDLE,
            "last_rotation": started_at,
            "next_rotation": next_rotation(started_at, state.interval, now),
            "started_at": None,
        }
    )
    before = None
    if state.phase is RotationPhase.STARTED:
        before = state.model_copy(update={"phase": RotationPhase.FINISHING})
    return RotationStep(
        action=RotationAction.REVOKE,
        before=before,
        after=finished,
        message="pods rolled: previous credentials revoked",
    )


# -- the Secret's data ----------------------------------------------------------------------


def generate_token() -> str:
    """A new random verify token / Redis password (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def generate_rotated_secret_data(
    current: Mapping[str, str], rotation_id: str | None = None
) -> dict[str, str]:
    """The Secret's data for a rotation: new current values, the old ones as ``...Previous``.

    Idempotent per rotation: if ``current`` already carries ``rotation_id`` it is returned
    unchanged, so re-running a step after a restart does not rotate twice. The database role
    switches to its standby partner (``_a`` <-> ``_b``) with a new password in ``databaseUrl``.
    """
    if rotation_id is not None and current.get(ROTATION_ID) == rotation_id:
        return dict(current)
    data = dict(current)
    if current.get(REDIS_PASSWORD):
        data[REDIS_PASSWORD_PREVIOUS] = current[REDIS_PASSWORD]
    data[REDIS_PASSWORD] = generate_token()
    if current.get(VERIFY_TOKEN):
        data[VERIFY_TOKEN_PREVIOUS] = current[VERIFY_TOKEN]
    data[VERIFY_TOKEN] = generate_token()
    if current.get(ADMIN_TOKEN):
        data[ADMIN_TOKEN_PREVIOUS] = current[ADMIN_TOKEN]
    data[ADMIN_TOKEN] = generate_token()
    if current.get(DATABASE_URL) and current.get(DATABASE_ROLE):
        old = database.DatabaseCredentials.from_url(current[DATABASE_URL])
        new_role = database.other_role(current[DATABASE_ROLE])
        new = old.model_copy(
            update={"role": new_role, "password": SecretStr(database.generate_password())}
        )
        data[DATABASE_ROLE_PREVIOUS] = current[DATABASE_ROLE]
        data[DATABASE_ROLE] = new_role
        data[DATABASE_URL] = new.url
    data[ROTATION_ID] = rotation_id or rotation_id_for(datetime.now(UTC))
    return data


def finalize_secret_data(current: Mapping[str, str]) -> dict[str, str]:
    """The Secret's data once a rotation is complete: the ``...Previous`` keys removed."""
    return {key: value for key, value in current.items() if key not in PREVIOUS_KEYS}


# -- the actions outside Kubernetes ---------------------------------------------------------


@dataclass(frozen=True)
class MetaRegistration:
    """Where the verify token is registered (``spec.ingress.webhook.register``)."""

    graph_url: str
    phone_number_id: str
    access_token: str
    callback_url: str

    def __repr__(self) -> str:  # keep the token out of logs
        return (
            f"MetaRegistration(graph_url={self.graph_url!r}, "
            f"phone_number_id={self.phone_number_id!r}, callback_url={self.callback_url!r})"
        )


async def apply_rotated_credentials(
    data: Mapping[str, str], *, postgres_admin_url: str | None = None
) -> None:
    """``ROTATE``'s work outside Kubernetes: the new current database role gets its password
    and LOGIN (idempotent). Call it on every ``ROTATE`` step, before writing the rotated
    Secret: a crash in between costs nothing (the next step generates and applies again), while
    the other order would let pods roll onto a role that cannot log in yet."""
    if postgres_admin_url and data.get(DATABASE_URL) and data.get(DATABASE_ROLE):
        creds = database.DatabaseCredentials.from_url(data[DATABASE_URL])
        await database.set_role_password(
            postgres_admin_url, data[DATABASE_ROLE], creds.password.get_secret_value()
        )


async def revoke_previous_credentials(
    data: Mapping[str, str],
    *,
    postgres_admin_url: str | None = None,
    meta: MetaRegistration | None = None,
) -> None:
    """``REVOKE``'s work outside Kubernetes (idempotent), given the Secret's data *before*
    :func:`finalize_secret_data`: register the current verify token with Meta (the web tier
    now accepts it), and revoke the previous database role. Then write the finalized Secret."""
    if meta is not None and data.get(VERIFY_TOKEN):
        await meta_webhook.register_callback(
            meta.graph_url,
            meta.phone_number_id,
            meta.access_token,
            meta.callback_url,
            data[VERIFY_TOKEN],
        )
    previous = data.get(DATABASE_ROLE_PREVIOUS)
    if postgres_admin_url and previous and previous != data.get(DATABASE_ROLE):
        await database.revoke_role(postgres_admin_url, previous)
