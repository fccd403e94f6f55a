"""Part ``model`` (condition ``ModelAvailable``): does OpenAI still serve the agent's model?

``GET /v1/models/{id}`` with the agent's key, on every pass (so a spec change is checked at
once) and by the periodic check (so a shutdown is noticed without one; agents with the same key,
base URL and model share an answer up to half a check interval old); the condition is
:func:`whatsapp_operator.models.model_condition`'s. Ahead of an announced shutdown the
condition stays ``True`` (reason ``ShutdownAnnounced``) and a Warning Event says when and what
to set instead: on every pass, and on a periodic check when the message changed. A model that
is gone makes ``Ready`` ``False``. When OpenAI does not answer, the condition keeps what the
last check found.
"""

from __future__ import annotations

import datetime as dt

from ... import status as st
from ...errors import ReleasedError, TemporaryError
from ...models import SHUTDOWN_ANNOUNCED, model_condition, model_exists
from .base import Pass


def today() -> dt.date:
    """The operator's date (UTC), against which announced shutdowns are compared."""
    return dt.datetime.now(dt.UTC).date()


async def ensure(p: Pass) -> None:
    agent = p.agent
    model = p.inputs.spec.assistant.model
    try:
        exists = await model_exists(
            p.inputs.openai_params(agent.settings),
            model,
            max_age=agent.settings.check_interval / 2 if p.periodic else 0.0,
        )
    except TemporaryError as exc:
        p.check_failed(st.MODEL_AVAILABLE, exc)
        return
    except ReleasedError as exc:  # the key is refused: no model can be checked
        p.outcome.fail(st.MODEL_AVAILABLE, exc)
        return
    cond = model_condition(model, exists, today())
    changed = p.changed(cond)
    p.outcome.set(cond)
    if cond.status == "False" and changed:
        agent.events.warn(cond.reason, cond.message)
    elif cond.reason == SHUTDOWN_ANNOUNCED and (changed or not p.periodic):
        agent.events.warn("ModelShutdownAnnounced", cond.message)
