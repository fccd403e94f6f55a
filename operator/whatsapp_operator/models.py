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

The answer depends only on the base URL, the key and the model, and many agents often share
all three: the periodic check (``max_age``) takes an answer given for the same three within
that many seconds, so that they ask once per check interval, not once each.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

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


#: (base URL, digest of the key, model) -> (``time.monotonic()`` of the answer, the answer).
_answers: dict[tuple[str, str, str], tuple[float, bool]] = {}
#: Above this many remembered answers, the old ones are dropped.
_ANSWERS_KEPT = 4096


def _answer_key(params: OpenAIParams, model: str) -> tuple[str, str, str]:
    key = hashlib.sha256(params.api_key.get_secret_value().encode()).hexdigest()
    return params.base_url.rstrip("/"), key, model


async def model_exists(
    client_or_params: AsyncOpenAI | OpenAIParams, model: str, *, max_age: float = 0.0
) -> bool:
    """Whether OpenAI (or the compatible server) serves ``model`` to this key; with
    ``max_age``, an answer given for the same base URL, key and model at most that many seconds
    ago is taken instead of asking again.

    Raises the errors of :mod:`whatsapp_operator.knowledge` (a refused key, an unreachable
    server) for everything but "no such model".
    """
    if not isinstance(client_or_params, OpenAIParams):
        return await _ask(client_or_params, model)
    key = _answer_key(client_or_params, model)
    now = time.monotonic()
    known = _answers.get(key)
    if known is not None and now - known[0] <= max_age:
        return known[1]
    served = await _ask(client_or_params, model)
    if len(_answers) >= _ANSWERS_KEPT:
        for old in sorted(_answers, key=lambda k: _answers[k][0])[: _ANSWERS_KEPT // 2]:
            del _answers[old]
    _answers[key] = (time.monotonic(), served)
    return served


async def _ask(client_or_params: AsyncOpenAI | OpenAIParams, model: str) -> bool:
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
