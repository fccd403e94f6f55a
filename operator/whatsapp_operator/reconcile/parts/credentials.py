"""Part ``credentials``: the generated ``NAME-credentials`` Secret.

Created once with fresh values (Redis password, webhook verify token); later passes add only
keys it lacks and never overwrite a value (rotation changes them: see
:mod:`whatsapp_operator.reconcile.rotate`). A prerequisite: its errors block the agent.
"""

from __future__ import annotations

from ... import builders
from ... import credentials as keys
from .base import Pass


async def ensure(p: Pass) -> None:
    """Create or complete the Secret; its values go to ``p.credentials``."""
    agent = p.agent
    manifest = builders.build_credentials_secret(
        agent.name, agent.namespace, builders.generate_credentials(), owner_uid=agent.uid
    )
    data, created = await agent.kube.ensure_secret(manifest)
    p.credentials = builders.decode_secret_data(data)
    if created and len(data) == len(manifest["data"]):
        agent.events.info("CredentialsCreated", "generated the agent's credentials Secret")
    p.outcome.fields["appliedRotationId"] = p.credentials.get(keys.ROTATION_ID)
