"""Oversized-body probe: ``python -m tests.bench.body_limit [--mib 200]``.

Starts the web tier (``bot.main:app`` under uvicorn with the production flags of
``tests.bench._common``) on 127.0.0.1 against a real ``redis-server``, then:

1. baseline: 20 ordinary signed webhooks; the server's peak RSS (``VmHWM``) after them;
2. probe: one ``POST /webhook`` with ``Transfer-Encoding: chunked`` (no Content-Length) of
   ``--mib`` MiB, sent in 64 KiB chunks until the server answers or closes the connection;
   the server's peak RSS after it, the status it answered and how much it let in.

Prints both peaks and their ratio (probe / baseline). Every socket wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bot.whatsapp.simulate import signed_delivery, text_message_payload
from tests.bench._common import bench_env, machine, start_uvicorn, stop_process
from tests.servers import start_redis

PHONE_NUMBER_ID = "100000000000001"
APP_SECRET = "0123456789abcdef0123456789abcdef"
CHUNK = 64 * 1024


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM")


def chunked_post(port: int, total: int, timeout: float = 120.0) -> dict[str, Any]:
    """Send ``total`` bytes as a chunked POST /webhook; stop when the server answers."""
    sent = 0
    answer = b""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(b"POST /webhook HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n"
                     b"X-Hub-Signature-256: sha256=00\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % CHUNK + b"a" * CHUNK + b"\r\n"
        try:
            while sent < total and time.monotonic() - started < timeout:
                if select.select([conn], [], [], 0)[0]:
                    break  # the server answered (or closed) before the body ended
                conn.sendall(chunk)
                sent += CHUNK
            else:
                conn.sendall(b"0\r\n\r\n")
            answer = conn.recv(65536)
        except OSError:
            with contextlib.suppress(OSError):
                answer = conn.recv(65536)
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return {"sent_mib": round(sent / 2**20, 1), "status": status,
            "seconds": round(time.monotonic() - started, 2)}


def probe(mib: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="released-bench-body-"))
    (workdir / "redis").mkdir()
    server = start_redis(workdir=workdir / "redis")
    env = bench_env(
        PHONE_NUMBER_ID=PHONE_NUMBER_ID, META_APP_SECRET=APP_SECRET,
        META_VERIFY_TOKEN="bench-verify-token-0123456789", META_ACCESS_TOKEN="bench-access-token",
        OPENAI_API_KEY="bench-openai-key", REDIS_URL=server.url,
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'bench.db'}", LOG_FORMAT="json",
    )
    proc, port = start_uvicorn("bot.main:app", env, workdir / "web.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in range(20):
                body, headers = signed_delivery(
                    text_message_payload(PHONE_NUMBER_ID, f"question {i}"), APP_SECRET)
                assert client.post("/webhook", content=body, headers=headers).status_code == 200
        baseline = peak_rss_mib(proc.pid)
        result = chunked_post(port, mib * 2**20)
        time.sleep(0.5)
        peak = peak_rss_mib(proc.pid)
        alive = proc.poll() is None
    finally:
        stop_process(proc)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"machine": machine(), "body_mib": mib, "baseline_peak_rss_mib": baseline,
            "probe_peak_rss_mib": peak, "ratio": round(peak / baseline, 2),
            "server_alive": alive, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = probe(args.mib)
    print(json.dumps(report, indent=2))
    print(f"peak RSS: {report['baseline_peak_rss_mib']} MiB after ordinary webhooks, "
          f"{report['probe_peak_rss_mib']} MiB after a {args.mib} MiB chunked POST "
          f"({report['ratio']}x); answered {report['status']} after {report['sent_mib']} MiB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
