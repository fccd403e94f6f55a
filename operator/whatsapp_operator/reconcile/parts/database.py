"""Part ``database``: the agent's own database and roles on the shared PostgreSQL.

Only for agents without ``spec.database.secretRef`` (the precondition
:func:`~whatsapp_operator.reconcile.inputs.database_configured` makes sure the operator then
has a shared server). The first pass provisions the database and writes its URL and role into
``NAME-credentials``; every later pass re-asserts them on the server (which heals a restored
server) with a connection limit derived from the agent's replicas and concurrency. A
prerequisite: its errors block the agent.
"""

from __future__ import annotations

from released.agent.naming import child_names

from ... import credentials as keys
from ... import handover
from ...database import DatabaseCredentials, connection_limit, ensure_database
from .base import Pass


async def ensure(p: Pass) -> None:
    """Provision (idempotently) and record ``status.database`` (``None`` when not ours)."""
    agent = p.agent
    admin_url = agent.settings.postgres_admin_url
    if p.inputs.spec.database_secret_ref is not None or admin_url is None:
        p.outcome.fields["database"] = None
        return
    current = None
    if p.credentials.get(keys.DATABASE_URL):
        try:
            current = DatabaseCredentials.from_url(p.credentials[keys.DATABASE_URL])
        except ValueError:
            current = None
    spec = p.inputs.spec
    db = await ensure_database(
        admin_url.get_secret_value(),
        agent.key,
        host_for_pods=agent.settings.postgres_host_for_pods,
        current=current,
        connections=connection_limit(spec.web.replicas, spec.worker.replicas),
    )
    wanted = {keys.DATABASE_URL: db.url, keys.DATABASE_ROLE: db.role}
    if any(p.credentials.get(k) != v for k, v in wanted.items()):
        await agent.kube.write_secret_values(
            agent.namespace, child_names(agent.name).credentials_secret, wanted
        )
        p.credentials.update(wanted)
    handover.remember(agent.uid, db.url)  # what the held count logs in with
    p.outcome.fields["database"] = {"name": db.database, "role": db.role}
