"""Deleting an agent: remove what lives outside the cluster (children go with the owner refs).

Three parts, each idempotent and tried on every attempt until it succeeds: the OpenAI vector
store and its files, Meta's callback URL override (when one was set or asked for), and a
provisioned database (unless ``keepDatabases``). After ``cleanup_max_attempts`` failed attempts
the finalizer is released anyway, with a Warning Event that says what may be left behind.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from released.agent.spec import AgentSpec
from released.agent.validation import InvalidSpec, parse_spec

from .. import metrics
from ..database import drop_database
from ..errors import ReleasedError, TemporaryError
from ..knowledge import KnowledgeState, delete_knowledge
from ..kube import KubeError
from ..meta_webhook import unregister_callback
from .context import Agent, backoff
from .inputs import MissingInput, openai_params_of, read_secret_key
from .parts.webhook import webhook_requested
from .status_writer import write_blocked

logger = logging.getLogger("whatsapp_operator")


async def cleanup(agent: Agent, retry: int) -> None:
    """One attempt (``retry``: how many came before); raises :class:`TemporaryError` to be
    tried again, returns when the finalizer may go."""
    settings, kube, namespace = agent.settings, agent.kube, agent.namespace
    failures: list[str] = []

    async def attempt(what: str, action: Callable[[], Awaitable[Any]]) -> None:
        try:
            await action()
        except (ReleasedError, MissingInput, KubeError) as exc:
            failures.append(f"{what}: {getattr(exc, 'message', None) or exc}")
        except Exception as exc:
            logger.exception("cleanup of %s: %s failed", agent.key, what)
            failures.append(f"{what}: {type(exc).__name__}")

    try:
        spec: AgentSpec | None = parse_spec(agent.body.get("spec") or {}, check=False)
    except InvalidSpec:
        spec = None

    if spec is not None:
        parsed = spec

        async def delete_store() -> None:
            params = await openai_params_of(kube, namespace, parsed, settings)
            state = KnowledgeState.from_status(agent.status.get("knowledge"))
            await delete_knowledge(params, state, agent_key=agent.key)

        await attempt("OpenAI knowledge", delete_store)

        if agent.status.get("webhookUrl") or webhook_requested(parsed):

            async def unregister() -> None:
                token = await read_secret_key(
                    kube, namespace, parsed.secrets.meta.name, "accessToken"
                )
                await unregister_callback(settings.graph_url, parsed.phone_number_id, token)

            await attempt("Meta webhook override", unregister)

        admin_url = settings.postgres_admin_url
        if parsed.database_secret_ref is None and admin_url is not None:
            if settings.keep_databases:
                agent.events.info("DatabaseKept", "keepDatabases is set: the database stays")
            else:

                async def drop() -> None:
                    await drop_database(admin_url.get_secret_value(), agent.key)

                await attempt("PostgreSQL database", drop)

    if not failures:
        agent.events.info("CleanedUp", "external resources removed")
        metrics.set_agent_ready(namespace, agent.name, None)
        return
    message = "; ".join(failures)
    if retry + 1 >= settings.cleanup_max_attempts:
        text = (
            f"giving up cleanup after {retry + 1} attempts, releasing the finalizer; "
            f"may be left behind: {message}"
        )
        agent.events.warn("CleanupFailed", text)
        with contextlib.suppress(KubeError, ReleasedError):
            await write_blocked(agent, "CleanupFailed", text, event=False)
        metrics.set_agent_ready(namespace, agent.name, None)
        return
    agent.events.warn("CleanupRetrying", f"attempt {retry + 1}: {message}")
    raise TemporaryError(message, delay=backoff(retry))
