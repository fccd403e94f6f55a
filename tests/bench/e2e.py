"""End-to-end benchmark: ``python -m tests.bench.e2e [--quick] [--db sqlite|postgres]``.

Real processes (``bot.devstack.LocalStack``): Redis, uvicorn serving ``bot.main:app``, a Celery
worker (threads pool, ``--concurrency`` tasks at once in one process), the local fakes of
Meta's Graph API and OpenAI (answering at once: no latency configured), and the database
(PostgreSQL from Debian's packages by default, as in production; ``--db sqlite`` for the
stack's default).
``OPENAI_RATE_LIMIT_PER_SECOND`` is set high (``--rate-limit``) because the default of 1 per
second per agent would be the only thing measured.

Measured: the time the platform adds, from just before the signed webhook POST leaves the
client to the moment the fake Graph API records the reply (its ``at`` timestamp; same machine,
same clock), for

- a steady rate (``--rate`` messages per second for ``--seconds``, open loop), and
- a burst (``--burst`` messages posted at once over 64 connections).

Every message is a FAQ question from one of ``--users`` senders with its own wamid; every one
must be answered exactly once (replies counted by ``context_message_id``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bot.devstack import LocalStack
from bot.whatsapp.simulate import new_wamid, signed_delivery, text_message_payload
from released.fakes import FakeMeta
from tests.bench._common import children, cpu_seconds, machine, percentile
from tests.bench.webhook import summarize_profile
from tests.servers import start_postgres

QUESTION = "What is Released?"


@contextmanager
def stack(workdir: Path, concurrency: int, rate_limit: float, db: str) -> Iterator[LocalStack]:
    pg = start_postgres() if db == "postgres" else None
    extra = {"OPENAI_RATE_LIMIT_PER_SECOND": str(rate_limit), "LOG_FORMAT": "json"}
    if pg is not None:
        extra["DATABASE_URL"] = pg.url
    local = LocalStack(workdir=workdir, web_port=0, with_purge=False,
                       worker_concurrency=concurrency, extra_env=extra)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        if pg is not None:
            pg.stop()


def _delivery(local: LocalStack, i: int, users: int) -> tuple[str, bytes, dict[str, str]]:
    wamid = new_wamid()
    payload = text_message_payload(local.env["PHONE_NUMBER_ID"], QUESTION, wamid=wamid,
                                   wa_id=f"3461{i % users:07d}")
    body, headers = signed_delivery(payload, local.env["META_APP_SECRET"])
    return wamid, body, headers


async def _post_all(url: str, items: list[tuple[str, bytes, dict[str, str]]], rate: float,
                    connections: int) -> dict[str, float]:
    """POST every item (at ``rate`` per second, or all at once when 0); wamid -> send time."""
    sent_at: dict[str, float] = {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    gate = asyncio.Semaphore(connections)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def one(wamid: str, body: bytes, headers: dict[str, str], at: float) -> None:
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with gate:
                sent_at[wamid] = time.time()
                response = await client.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")

        start = time.monotonic() + 0.1
        await asyncio.gather(*(
            one(w, b, h, start + (i / rate if rate > 0 else 0.0))
            for i, (w, b, h) in enumerate(items)
        ))
    return sent_at


def _wait_answers(meta: FakeMeta, wamids: set[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        replies = [m for m in meta.sent() if m.get("context_message_id") in wamids]
        if len({m["context_message_id"] for m in replies}) >= len(wamids):
            time.sleep(1.0)  # let a duplicate show up, if any
            return [m for m in meta.sent() if m.get("context_message_id") in wamids]
        if time.monotonic() > deadline:
            return replies
        time.sleep(0.25)


def measure(local: LocalStack, meta: FakeMeta, count: int, rate: float, users: int,
            timeout: float) -> dict[str, Any]:
    items = [_delivery(local, i, users) for i in range(count)]
    wamids = {w for w, _, _ in items}
    worker_pids = [local.processes["worker"].pid, *children(local.processes["worker"].pid)]
    web_pid = local.processes["web"].pid
    cpu0 = {p: cpu_seconds(p) for p in [web_pid, *worker_pids]}
    began = time.time()
    sent_at = asyncio.run(_post_all(f"{local.urls['web']}/webhook", items, rate, 64))
    posted = time.time()
    replies = _wait_answers(meta, wamids, timeout)
    cpu = {p: cpu_seconds(p) - cpu0[p] for p in cpu0}
    per = Counter(m["context_message_id"] for m in replies)
    first: dict[str, float] = {}
    for m in sorted(replies, key=lambda m: m["at"]):
        first.setdefault(m["context_message_id"], m["at"])
    latencies = [1000 * (first[w] - sent_at[w]) for w in first]
    last = max(first.values(), default=posted)
    return {
        "messages": count,
        "rate": rate or "burst",
        "answered": len(per),
        "unanswered": len(wamids) - len(per),
        "duplicates": sum(n - 1 for n in per.values()),
        "post_seconds": round(posted - began, 2),
        "drain_seconds": round(last - began, 2),
        "answers_per_s": round(len(per) / max(last - began, 1e-9), 1),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies, default=float("nan")), 1),
        "cpu_s_web": round(cpu[web_pid], 2),
        "cpu_s_worker": round(sum(cpu[p] for p in worker_pids), 2),
    }


def _py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the worker (and its children, if any), as collapsed stacks."""
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "--subprocesses", "-d", str(seconds), "-r", "100",
         "--nonblocking", "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench(rate: float, seconds: float, burst: int, concurrency: int, rate_limit: float,
          users: int, db: str, profile: bool = False) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="released-bench-e2e-"))
    report: dict[str, Any] = {"machine": machine(), "worker_concurrency": concurrency,
                              "rate_limit_per_s": rate_limit, "db": db, "results": []}
    try:
        with stack(workdir, concurrency, rate_limit, db) as local:
            meta = FakeMeta.attach(local.urls["fake_meta"])
            measure(local, meta, 4, 0, users, 60)  # warm up: connections, imports, caches
            meta.reset()
            steady = measure(local, meta, int(rate * seconds), rate, users, seconds + 120)
            steady["phase"] = f"steady {rate:g}/s x {seconds:g}s"
            report["results"].append(steady)
            print(json.dumps(steady), flush=True)
            meta.reset()
            spy = None
            if profile:
                raw = workdir / "worker.collapsed.txt"
                spy = _py_spy(local.processes["worker"].pid, 15, raw)
            burst_row = measure(local, meta, burst, 0, users, 300)
            if spy is not None:
                spy.wait(timeout=120)
                if raw.exists():
                    report["worker_profile"] = summarize_profile(raw, 60)
            burst_row["phase"] = f"burst {burst}"
            report["results"].append(burst_row)
            print(json.dumps(burst_row), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def print_report(report: dict[str, Any]) -> None:
    print("\nmachine:", json.dumps(report["machine"]))
    print(f"worker concurrency {report['worker_concurrency']}, "
          f"OPENAI_RATE_LIMIT_PER_SECOND={report['rate_limit_per_s']:g}, db {report['db']}")
    print(f"{'phase':22} {'msgs':>5} {'answered':>8} {'dupes':>5} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'drain s':>7} {'ans/s':>6} {'cpu web':>7} "
          f"{'cpu wrk':>7}")
    for r in report["results"]:
        print(f"{r['phase']:22} {r['messages']:>5} {r['answered']:>8} {r['duplicates']:>5} "
              f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} "
              f"{r['drain_seconds']:>7.1f} {r['answers_per_s']:>6.1f} {r['cpu_s_web']:>7.2f} "
              f"{r['cpu_s_worker']:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="End-to-end benchmark (see the module doc).")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4, help="the worker's slots")
    parser.add_argument("--rate-limit", type=float, default=10_000.0)
    parser.add_argument("--users", type=int, default=200, help="distinct senders")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--quick", action="store_true", help="10/s x 3 s and a burst of 100")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", action="store_true", help="py-spy the worker in the burst")
    args = parser.parse_args(argv)
    rate, seconds, burst = args.rate, args.seconds, args.burst
    if args.quick:
        rate, seconds, burst = 10.0, 3.0, 100
    report = bench(rate, seconds, burst, args.concurrency, args.rate_limit, args.users, args.db,
                   args.profile)
    print_report(report)
    for name, self_pct, incl_pct in report.get("worker_profile", []):
        print(f"  {self_pct:5.1f} {incl_pct:5.1f}  {name}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
