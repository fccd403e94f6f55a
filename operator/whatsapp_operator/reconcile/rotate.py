"""Credential rotation, one step per timer tick (the state machine is :mod:`..rotation`).

:func:`rotate_if_due` reads the agent's rotation state and the ``NAME-credentials`` Secret,
asks :func:`~whatsapp_operator.rotation.plan_rotation_step` what to do, and does it: record the
state before acting, act (rotate or revoke, inside and outside the cluster), record the state
after. The Secret is written with its ``resourceVersion`` (a concurrent writer makes the step
fail, and it is planned again on the next tick); each write is followed by a reconciliation
request, which rolls the pods onto the new values (their checksum covers the Secret).

:func:`rotation_fields` gives a pass the ``nextRotation`` and ``CredentialsRotated`` to write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import Any

from released.agent.naming import child_names
from released.agent.spec import AgentSpec
from released.agent.validation import InvalidSpec, parse_spec

from .. import credentials as keys
from .. import rotation as rot
from .. import status as st
from ..builders import decode_secret_data
from ..errors import ReleasedError
from ..kube import Kube, KubeError
from .context import Agent
from .inputs import BLOCKER_REASONS, MissingInput, read_secret_key
from .parts.webhook import webhook_requested, webhook_url
from .parts.workloads import read_workloads
from .references import request_reconcile
from .status_writer import merged_status, update_status


def rotation_fields(
    body: Mapping[str, Any], spec: AgentSpec
) -> tuple[dict[str, Any], st.Condition]:
    """``nextRotation`` and ``CredentialsRotated`` for the status (the timer does the rest)."""
    current = body.get("status") or {}
    interval = spec.rotation.interval_timedelta
    state = rot.RotationState.from_status(current, interval)
    if state.phase is not rot.RotationPhase.IDLE:
        return {}, st.Condition.false(
            st.CREDENTIALS_ROTATED,
            "RotationInProgress",
            f"rotation {state.rotation_id} in progress ({state.phase.value})",
        )
    due = state.due_at()
    if due is None:
        created = rot.parse_time(body["metadata"].get("creationTimestamp"))
        due = (created or dt.datetime.now(dt.UTC)) + interval
    when = rot.format_time(due)
    last = (
        f"last rotation at {rot.format_time(state.last_rotation)}; " if state.last_rotation else ""
    )
    reason = "Rotated" if state.last_rotation else "UpToDate"
    return {"nextRotation": when}, st.Condition.true(
        st.CREDENTIALS_ROTATED, reason, f"{last}next rotation at {when}"
    )


async def pods_rolled(
    kube: Kube,
    namespace: str,
    name: str,
    status: Mapping[str, Any],
    rotation_id: str | None,
    suspended: bool,
) -> bool:
    """Whether the pods run the Secret of ``rotation_id``: reconciled onto it and rolled out."""
    if rotation_id is None or status.get("appliedRotationId") != rotation_id:
        return False
    if suspended:
        return True
    cond = await read_workloads(kube, namespace, name, suspended=False)
    return cond.status == "True"


async def write_credentials(
    kube: Kube,
    namespace: str,
    secret: Mapping[str, Any],
    old: Mapping[str, str],
    new: Mapping[str, str],
) -> None:
    """Write ``new`` over ``old`` (removed keys go), guarded by the read resourceVersion."""
    values: dict[str, str | None] = {k: v for k, v in new.items() if old.get(k) != v}
    values.update({k: None for k in old if k not in new})
    meta = secret.get("metadata") or {}
    await kube.write_secret_values(
        namespace, str(meta["name"]), values, resource_version=meta.get("resourceVersion")
    )


async def rotate_if_due(agent: Agent, *, now: dt.datetime | None = None) -> None:
    """One step of credential rotation when due (or in progress); nothing otherwise."""
    kube, namespace, name = agent.kube, agent.namespace, agent.name
    current = agent.status
    if st.ready_reason(current) in BLOCKER_REASONS:
        return
    try:
        spec = parse_spec(agent.body.get("spec") or {}, check=False)
    except InvalidSpec:
        return
    state = rot.RotationState.from_status(current, spec.rotation.interval_timedelta)
    now = now or dt.datetime.now(dt.UTC)
    if state.phase is rot.RotationPhase.IDLE and not rot.is_due(state, now):
        return
    secret = await kube.get("v1", "Secret", namespace, child_names(name).credentials_secret)
    if secret is None:
        return  # reconciliation creates it first
    data = decode_secret_data(secret.get("data"))
    rolled = await pods_rolled(
        kube, namespace, name, current, data.get(keys.ROTATION_ID), spec.suspend
    )
    step = rot.plan_rotation_step(state, now, rolled, secret_rotation_id=data.get(keys.ROTATION_ID))
    settings = agent.settings
    admin_url = (
        settings.postgres_admin_url.get_secret_value()
        if settings.postgres_admin_url is not None and spec.database_secret_ref is None
        else None
    )

    async def record(
        state_after: rot.RotationState, cond: st.Condition, extra: Mapping[str, Any] | None = None
    ) -> None:
        fields = {**state_after.to_status(), **(extra or {})}

        def mutate(_fresh: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
            gen = cur.get("observedGeneration")
            return merged_status(
                cur, generation=gen, conditions=[cond], fields=fields, observed=False
            )

        await update_status(kube, namespace, name, mutate)

    in_progress = st.Condition.false(
        st.CREDENTIALS_ROTATED, "RotationInProgress", step.message or "rotating credentials"
    )
    try:
        if step.before is not None:
            await record(step.before, in_progress)
            if step.before.phase is rot.RotationPhase.STARTED:
                agent.events.info("RotationStarted", "rotating the agent's credentials")
        if step.action is rot.RotationAction.ROTATE:
            rotation_id = (step.before or step.after).rotation_id
            new = rot.generate_rotated_secret_data(data, rotation_id)
            # PostgreSQL learns the new role's password first: from the moment the Secret holds
            # the new URL, a pod that (re)starts reads it and must be able to log in. A crash in
            # between costs nothing (the next step generates and sets a fresh password).
            await rot.apply_rotated_credentials(new, postgres_admin_url=admin_url)
            if new != data:
                await write_credentials(kube, namespace, secret, data, new)
            await record(step.after, in_progress)
            if new != data:
                await request_reconcile(kube, namespace, name)
        elif step.action is rot.RotationAction.REVOKE:
            registration = None
            url = webhook_url(spec)
            if webhook_requested(spec) and url is not None:
                registration = rot.MetaRegistration(
                    graph_url=settings.graph_url,
                    phone_number_id=spec.phone_number_id,
                    access_token=await read_secret_key(
                        kube, namespace, spec.secrets.meta.name, "accessToken"
                    ),
                    callback_url=url,
                )
            await rot.revoke_previous_credentials(
                data, postgres_admin_url=admin_url, meta=registration
            )
            final = rot.finalize_secret_data(data)
            if final != data:
                await write_credentials(kube, namespace, secret, data, final)
            done = st.Condition.true(
                st.CREDENTIALS_ROTATED,
                "Rotated",
                f"rotated at {st.now_iso(now)}; next rotation at "
                f"{rot.format_time(step.after.next_rotation or now)}",
            )
            await record(step.after, done)
            if final != data:  # roll the pods off the previous values (after the record)
                await request_reconcile(kube, namespace, name)
            agent.events.info("CredentialsRotated", "credentials rotated; previous ones revoked")
        elif step.after != state:
            await record(step.after, rotation_fields({**agent.body, "status": current}, spec)[1])
    except (ReleasedError, MissingInput) as exc:
        message = getattr(exc, "message", str(exc))
        agent.events.warn("RotationFailed", message)
        failed = st.Condition.false(st.CREDENTIALS_ROTATED, "RotationInProgress", message)
        with contextlib.suppress(KubeError, ReleasedError):
            await record(step.before or state, failed)
