"""Calls to a URL a tenant chose: checked against the platform's policy, pinned to what was checked.

An agent's OpenAI Secret may name a ``baseUrl`` (an OpenAI-compatible server). The operator
calls it with the agent's key (the knowledge part), so without care a tenant could make the
operator request any address it can reach — the cluster's Services, the cloud's metadata
endpoint — and read the answer back through the agent's status. Here:

- :func:`base_url_problems` checks such a URL before any request: the policy's allowlist and
  ``https`` (:func:`released.agent.policy.check_openai_base_url`), then every address its host
  resolves to (:func:`released.agent.policy.check_resolved_addresses`); the problems are
  messages for ``Ready=False, reason=OpenAIBaseUrlRefused``.
- :func:`guarded_client` is the HTTP client those calls go through (``httpx2``, the OpenAI
  SDK's own client library). Its network backend
  resolves the host itself, refuses the connection when any address is not allowed, and
  connects to the checked address (TLS still verifies the host name), so a name that resolves
  to a public address at check time and to ``127.0.0.1`` a moment later (DNS rebinding) is
  still refused. It ignores proxy variables: a proxy would connect instead of it.

The same policy guards the handover notification URL (``spec.handover.notify.url``), which the
agent's worker calls: :func:`notify_url_problems` checks it the same way (without a prefix
allowlist) for ``Ready=False, reason=HandoverUrlRefused``; the operator itself never calls it.

Responses never reach the status: :mod:`whatsapp_operator.knowledge` reports status codes and
error codes only.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpcore2 as httpcore
import httpx2 as httpx

from released.agent.policy import (
    Policy,
    address_refused,
    check_notify_addresses,
    check_notify_url,
    check_openai_base_url,
    check_resolved_addresses,
    notify_endpoint,
)
from released.agent.spec import AgentSpec

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), as the connection would see them."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def base_url_problems(
    url: str, policy: Policy, *, default_url: str, resolver: Resolver = resolve
) -> list[str]:
    """Why the operator may not call the tenant's ``url`` (empty: it may)."""
    problems = check_openai_base_url(url, policy, default_url=default_url)
    if problems or url.rstrip("/") == default_url.rstrip("/"):
        return problems
    parts = urlsplit(url)
    host = parts.hostname or ""
    addresses = await resolver(host, parts.port or 443)
    return check_resolved_addresses(url, addresses, policy)


async def notify_url_problems(
    spec: AgentSpec, policy: Policy, *, resolver: Resolver = resolve
) -> list[str]:
    """Why the agent's worker may not call its handover notification URL (empty: it may)."""
    problems = check_notify_url(spec, policy)
    if problems or spec.handover is None or spec.handover.notify is None:
        return problems
    host, port = notify_endpoint(spec.handover.notify.url)
    return check_notify_addresses(await resolver(host, port), policy)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """A network backend that connects only to addresses the policy allows."""

    def __init__(
        self,
        policy: Policy,
        resolver: Resolver = resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolver(host, port)
        refused = _refused(addresses, self._policy)
        if not addresses or refused:
            # Neither host nor address in the message: it may end up in a status or an Event.
            raise httpcore.ConnectError("connection refused by the platform's policy")
        return await self._inner.connect_tcp(
            addresses[0],
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed for tenant URLs")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _refused(addresses: Sequence[str], policy: Policy) -> list[str]:
    return [a for a in addresses if address_refused(a, policy) is not None]


class GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx2``'s transport over :class:`GuardedBackend`, without proxies from the environment.

    httpx2 takes no network backend, so the connection pool is replaced by one that has it
    (tests/unit/operator/test_egress.py proves on real sockets that the guard holds).
    """

    def __init__(self, policy: Policy, resolver: Resolver = resolve) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=GuardedBackend(policy, resolver),
        )


def guarded_client(
    policy: Policy, *, timeout: float = 30.0, resolver: Resolver = resolve
) -> httpx.AsyncClient:
    """An ``httpx2.AsyncClient`` for a tenant-chosen URL (give it to ``AsyncOpenAI``)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, resolver),
        timeout=timeout,
        trust_env=False,
        follow_redirects=True,
    )
