"""How the web tier is served: uvicorn's command line and an HTTP protocol with timeouts.

The web tier faces the internet (through the ingress controller), so its HTTP server holds
under abuse on its own, whatever sits in front of it:

- **Connections and requests**: ``--limit-concurrency`` (connections plus requests in flight;
  beyond it uvicorn answers 503, which Meta retries), ``--backlog``, and
  ``--timeout-keep-alive`` longer than ingress-nginx's upstream keep-alive (60 s), so the
  proxy, not the pod, closes idle connections and never sends on one being closed.
- **Slow or endless headers**: ``bot.api.protocol.HttpProtocol`` closes a connection whose
  request line and headers have not arrived ``header_timeout`` seconds after it opened (or
  after the first byte of the next request on a kept-alive connection), and refuses headers
  longer than ``max_header_bytes`` (uvicorn's httptools protocol has neither).
- **Slow bodies**: the same protocol closes a connection whose body has not fully arrived
  ``body_timeout`` seconds after its headers; the application sees the client disconnect.
  The size of a body is the application's to cap while it streams in (``bot.api.webhook``).

The values are in :data:`LIMITS` and reach the operator's web container through
:func:`uvicorn_args`, the one place that spells the command line (``released run`` and the
benchmarks use it too). This module imports nothing beyond the standard library, so the
operator can read the command line without loading uvicorn.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The HTTP protocol class, as uvicorn's ``--http`` takes it (an import string).
HTTP_PROTOCOL = "bot.api.protocol:HttpProtocol"


@dataclass(frozen=True)
class Limits:
    """The web tier's HTTP limits (see the module doc)."""

    limit_concurrency: int = 1000
    backlog: int = 2048
    timeout_keep_alive: int = 65
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 32 * 1024


LIMITS = Limits()


def uvicorn_flags(*, limits: Limits = LIMITS) -> list[str]:
    """uvicorn's flags for the web tier, host and port aside (the benchmarks give the same ones
    to their baseline servers)."""
    return [
        "--http",
        HTTP_PROTOCOL,
        "--limit-concurrency",
        str(limits.limit_concurrency),
        "--backlog",
        str(limits.backlog),
        "--timeout-keep-alive",
        str(limits.timeout_keep_alive),
        "--proxy-headers",
        "--forwarded-allow-ips",
        "*",
        "--no-access-log",
    ]


def uvicorn_args(host: str, port: int, *, limits: Limits = LIMITS) -> list[str]:
    """``uvicorn bot.main:app`` and its flags, without the leading ``uvicorn``: what the
    operator's web container runs (``python -m uvicorn`` takes the same list)."""
    return ["bot.main:app", "--host", host, "--port", str(port), *uvicorn_flags(limits=limits)]
