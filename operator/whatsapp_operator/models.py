"""Is the agent's model still served? ``GET /v1/models/{id}`` and the table of shutdowns.

OpenAI shuts models down on announced dates (README of the contracts: gpt-4.1-mini, the first
default, on 2027-01-14); from then on every answer of an agent that still names it becomes a
lexical FAQ match or the fallback message. :func:`model_exists` asks OpenAI (the agent's key
and base URL, the operator's timeout and retry policy, errors as in
:mod:`whatsapp_operator.knowledge`); :func:`model_condition` turns the answer and the table of
announced shutdowns in :mod:`released.providers.openai` into the ``ModelAvailable`` condition:

============================ ======== ===================== ================================
OpenAI's answer              status   reason                message
============================ ======== ===================== ================================
200, no shutdown announced   True     ``Available``         the model answers
200, shutdown announced      True     ``ShutdownAnnounced`` "gpt-4.1-mini shuts down on
                                                            2027-01-14; set
                                                            spec.assistant.model to
                                                            gpt-6-luna" (and a Warning Event)
404, in the shutdown table   False    ``ModelShutDown``     shut down on the date; what to set
404, unknown                 False    ``ModelNotFound``     no such model for this key
============================ ======== ===================== ================================

An OpenAI-compatible server (the Secret's ``baseUrl``) whose 404 lacks OpenAI's
``model_not_found`` code (it may not serve ``/v1/models/{id}`` at all) is asked for its model
list instead.
"""

from __future__ import annotations

import datetime as dt

from openai import AsyncOpenAI

from released.providers import openai as openai_policy

from . import status as st
from .errors import NotFoundError
from .openai_api import OpenAIParams, session

#: What ``ModelAvailable`` says of a model that shut down or does not exist, and of one whose
#: shutdown is announced.
AVAILABLE, SHUTDOWN_ANNOUNCED = "Available", "ShutdownAnnounced"
SHUT_DOWN, NOT_FOUND = "ModelShutDown", "ModelNotFound"
#: OpenAI's error code for a model it does not serve (``GET /v1/models/{id}`` answers 404).
MODEL_NOT_FOUND = "model_not_found"


async def model_exists(client_or_params: AsyncOpenAI | OpenAIParams, model: str) -> bool:
    """Whether OpenAI (or the compatible server) serves ``model`` to this key.

    Raises the errors of :mod:`whatsapp_operator.knowledge` (a refused key, an unreachable
    server) for everything but "no such model".
    """
    async with session(client_or_params) as s:
        try:
            await s.call(
                f"look up the model {model}", lambda: s.client.models.retrieve(model)
            )
        except NotFoundError as exc:
            if exc.code == MODEL_NOT_FOUND:
                return False
            # A 404 without OpenAI's code: a compatible server that serves only the list.
            async def listed() -> bool:
                return any([m.id == model async for m in s.client.models.list()])

            try:
                return await s.call("list the models", listed)
            except NotFoundError:
                return False
        return True


def replacement_for(model: str) -> str:
    """The model to move to: OpenAI's named replacement (the default model)."""
    return openai_policy.DEFAULT_MODEL if model != openai_policy.DEFAULT_MODEL else model


def model_condition(model: str, exists: bool, today: dt.date) -> st.Condition:
    """``ModelAvailable`` from OpenAI's answer and the announced shutdowns (pure)."""
    shutdown = openai_policy.shutdown_date(model)
    instead = replacement_for(model)
    if not exists:
        if shutdown is not None:
            return st.Condition.false(
                st.MODEL_AVAILABLE,
                SHUT_DOWN,
                f"OpenAI shut {model} down on {shutdown.isoformat()}; set "
                f"spec.assistant.model to {instead}. Until then the bot answers only from its "
                "FAQs or with its fallback message",
            )
        return st.Condition.false(
            st.MODEL_AVAILABLE,
            NOT_FOUND,
            f"OpenAI does not serve the model {model!r} to this API key; set "
            f"spec.assistant.model to a model the key can use (e.g. {instead}). Until then the "
            "bot answers only from its FAQs or with its fallback message",
        )
    if shutdown is not None:
        verb = "shuts down" if shutdown > today else "was due to shut down"
        return st.Condition.true(
            st.MODEL_AVAILABLE,
            SHUTDOWN_ANNOUNCED,
            f"{model} {verb} on {shutdown.isoformat()}; set spec.assistant.model to {instead}",
        )
    return st.Condition.true(st.MODEL_AVAILABLE, AVAILABLE, f"OpenAI serves {model}")
