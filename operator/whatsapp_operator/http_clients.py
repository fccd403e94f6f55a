"""The operator's HTTP clients to Meta and OpenAI: connection pools shared by every agent.

Making an ``httpx2.AsyncClient`` builds a TLS context and loads the CA bundle into it: about
25 ms of CPU. A pass or a periodic check calls OpenAI and Meta four to six times; with a client
per call, that was most of the operator's CPU at 1,000 agents (``tests/bench/README.md``).
Now each event loop keeps one client per destination kind, and connections stay open between
calls:

- :func:`graph` for Meta's Graph API (the operator's ``RELEASED_GRAPH_URL``; no proxy from the
  environment, as before);
- :func:`openai` for the operator's OpenAI base URL (the SDK's own defaults:
  ``openai.DefaultAsyncHttpx2Client``);
- :func:`guarded` for an OpenAI-compatible URL a tenant chose, one per policy: the client of
  :func:`whatsapp_operator.egress.guarded_client`, whose every connection is checked.

Timeouts stay per request (each caller passes its own). :func:`aclose` closes the running loop's
clients when the operator stops; a closed or new loop gets new ones.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

import httpx2 as httpx
import openai as openai_sdk

from released.agent.policy import Policy

from .egress import guarded_client

_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


def _client(key: str, make: Callable[[], httpx.AsyncClient]) -> httpx.AsyncClient:
    clients = _by_loop.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(key)
    if client is None or client.is_closed:
        client = clients[key] = make()
    return client


#: Connections to one destination: at most 100 at once (the passes run 20 at a time, each with
#: a few calls), of which 8 stay open between calls. Each request looks at every pooled
#: connection (httpcore polls its socket), so a large idle pool costs CPU on every call; the
#: periodic checks at rest come one or two at a time (py-spy at 1,000 agents at rest: 12 % of
#: the operator's CPU went there, with httpx's 20 and the SDK's 100 kept connections).
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=8, keepalive_expiry=5.0)


def graph() -> httpx.AsyncClient:
    """The client for Meta's Graph API."""
    return _client("graph", lambda: httpx.AsyncClient(trust_env=False, limits=LIMITS))


def openai() -> httpx.AsyncClient:
    """The client for the operator's own OpenAI base URL (give it to ``AsyncOpenAI``)."""
    return _client("openai", lambda: openai_sdk.DefaultAsyncHttpx2Client(limits=LIMITS))


def guarded(policy: Policy) -> httpx.AsyncClient:
    """The client for tenant-chosen URLs under ``policy`` (give it to ``AsyncOpenAI``)."""
    return _client("guarded:" + policy.model_dump_json(), lambda: guarded_client(policy))


async def aclose() -> None:
    """Close the running loop's clients."""
    clients = _by_loop.pop(asyncio.get_running_loop(), {})
    for client in clients.values():
        await client.aclose()
