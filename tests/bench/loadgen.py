"""An open-loop HTTP load generator: ``python -m tests.bench.loadgen URL BODIES --rate R``.

Run as its own process. Request ``i`` is *scheduled* at ``start + i / rate`` whatever happened
to the earlier ones (wrk2-style constant rate), and its latency is measured from that scheduled
time, so a stalled server is charged for the requests queued behind the stall (no coordinated
omission). Requests go over ``--connections`` persistent HTTP/1.1 connections (raw asyncio
streams, uvloop when installed); each request body is one line of the BODIES file,
``<X-Hub-Signature-256>\\t<json>``, used once. Bounded: at most ``rate * duration`` requests,
at most the number of bodies, and ``--timeout`` seconds per request.

``--rate 0`` is closed-loop saturation instead: every connection sends its next request as soon
as the previous answer arrives, for ``--duration`` seconds.

Prints one JSON object: ``sent``, ``status`` (count per code), ``errors``, ``elapsed``,
``accepted_per_s`` (200s per second of the sending window), ``p50_ms``/``p90_ms``/``p99_ms``/
``max_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from tests.bench._common import percentile


def load_bodies(path: Path, limit: int) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    with path.open("rb") as handle:
        for line in handle:
            if len(out) >= limit:
                break
            sig, _, body = line.rstrip(b"\n").partition(b"\t")
            out.append((sig.decode(), body))
    return out


def request_bytes(host: str, path: str, sig: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: {sig}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> int:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run(
    url: str, bodies: list[tuple[str, bytes]], rate: float, duration: float,
    connections: int, timeout: float,
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    total = len(bodies) if rate <= 0 else min(len(bodies), int(rate * duration))
    payloads = [request_bytes(f"{host}:{port}", path, s, b) for s, b in bodies[:total]]
    latencies: list[float] = []
    service: list[float] = []  # from the actual write, for comparison (hides queueing)
    status: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    now = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
    start = now() + 0.2
    end_of_window = start + duration
    next_index = 0

    async def connection() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                if rate > 0:
                    item = await queue.get()
                    if item is None:
                        return
                    index, scheduled = item
                else:
                    if next_index >= total or now() >= end_of_window:
                        return
                    index, scheduled = next_index, now()
                    next_index += 1
                written = now()
                try:
                    code = await asyncio.wait_for(
                        _exchange(reader, writer, payloads[index]), timeout
                    )
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    errors[type(exc).__name__] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                done = now()
                latencies.append(done - scheduled)
                service.append(done - written)
                status[code] += 1
        finally:
            writer.close()

    async def producer() -> None:
        sent = 0
        while sent < total:
            t = now()
            due = min(total, int((t - start) * rate) + 1) if t >= start else 0
            while sent < due:
                queue.put_nowait((sent, start + sent / rate))
                sent += 1
            await asyncio.sleep(0.0005)
        for _ in range(connections):
            queue.put_nowait(None)

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    while now() < start:
        await asyncio.sleep(0.01)
    began = time.perf_counter()
    if rate > 0:
        await producer()
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - began
    window = max(elapsed, 1e-9) if rate <= 0 else max(duration, elapsed)
    ms = [x * 1000 for x in latencies]
    return {
        "rate": rate,
        "sent": sum(status.values()) + sum(errors.values()),
        "status": {str(k): v for k, v in sorted(status.items())},
        "errors": dict(errors),
        "elapsed": round(elapsed, 3),
        "accepted_per_s": round(status.get(200, 0) / window, 1),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms, default=float("nan")), 3),
        "service_p50_ms": round(percentile([x * 1000 for x in service], 50), 3),
        "service_p99_ms": round(percentile([x * 1000 for x in service], 99), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path)
    parser.add_argument("--rate", type=float, default=1000.0, help="req/s; 0 = closed loop")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=2_000_000, help="at most this many bodies")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    bodies = load_bodies(args.bodies, args.limit)
    result = asyncio.run(
        run(args.url, bodies, args.rate, args.duration, args.connections, args.timeout)
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
