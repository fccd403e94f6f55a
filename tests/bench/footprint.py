"""Per-agent footprint: ``python -m tests.bench.footprint [--messages 300] [--db postgres]``.

Starts one agent's processes as real processes (``bot.devstack.LocalStack``): Redis, the web
tier (uvicorn, one process), a Celery worker (prefork, ``--concurrency 2``: the main process
and two children), Celery beat, with the local fakes of Meta and OpenAI. Memory is read from
/proc: RSS, and PSS from ``smaps_rollup`` (pages shared between the worker's main process and
its forked children counted once, which is what the container's cgroup is charged). Measured:

- idle, 5 s after start;
- after ``--messages`` answered messages (imports done on first use, connection pools, caches,
  and Redis holding the bot's keys: de-duplication claims, rate-limit buckets, results).

Prints the figures beside the operator's defaults (``DEFAULT_RESOURCES`` in
``whatsapp_operator.builders.workloads``) and a suggestion derived from them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from released.fakes import FakeMeta
from tests.bench._common import REPO, children, machine, memory_kib, mib, tree_memory_kib
from tests.bench.e2e import measure, stack

PARTS = ("web", "worker", "beat", "redis")


def snapshot(local: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in PARTS:
        proc = local.processes.get(name)
        if proc is None:
            continue
        pids = [proc.pid, *children(proc.pid)]
        total = tree_memory_kib(pids)
        out[name] = {
            "processes": len(pids),
            "rss_mib": mib(total["rss"]),
            "pss_mib": mib(total["pss"]),
            "uss_mib": mib(total["uss"]),
            "per_process_rss_mib": [mib(memory_kib(p)["rss"]) for p in pids],
        }
    r = redis.Redis.from_url(local.urls["redis"])
    info = r.info("memory")
    out["redis"]["used_memory_mib"] = mib(info["used_memory"] / 1024)
    out["redis"]["keys"] = int(r.dbsize())
    r.close()
    return out


def defaults() -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "operator"))
    from released.agent.resources import DEFAULT_RESOURCES

    return {str(k): v for k, v in DEFAULT_RESOURCES.items()}


def suggest(after: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Request: measured PSS after traffic + 25 %, rounded up to 16 MiB; limit: 2x request."""
    out = {}
    for name, row in after.items():
        need = row["pss_mib"] * 1.25
        request = int(-(-need // 16) * 16)
        out[name] = {"requests.memory": f"{request}Mi", "limits.memory": f"{2 * request}Mi"}
    return out


def bench(messages: int, db: str, concurrency: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="released-bench-footprint-"))
    report: dict[str, Any] = {"machine": machine(), "worker_concurrency": concurrency, "db": db}
    try:
        with stack(workdir, concurrency, 10_000.0, db, with_beat=True) as local:
            time.sleep(5.0)
            report["idle"] = snapshot(local)
            meta = FakeMeta.attach(local.urls["fake_meta"])
            row = measure(local, meta, messages, 50.0, 100, 120)
            report["traffic"] = {k: row[k] for k in ("messages", "answered", "duplicates")}
            time.sleep(2.0)
            report["after_traffic"] = snapshot(local)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["defaults"] = defaults()
    report["suggested"] = suggest(report["after_traffic"])
    return report


def print_report(report: dict[str, Any]) -> None:
    print("\nmachine:", json.dumps(report["machine"]))
    print(f"db {report['db']}, worker prefork concurrency {report['worker_concurrency']}, "
          f"traffic {json.dumps(report['traffic'])}")
    print(f"{'part':7} {'procs':>5} {'idle RSS':>9} {'idle PSS':>9} {'after RSS':>9} "
          f"{'after PSS':>9} {'default req/limit':>18} {'suggested req/limit':>20}")
    for name in PARTS:
        idle, after = report["idle"].get(name), report["after_traffic"].get(name)
        if idle is None or after is None:
            continue
        d = report["defaults"].get(name, {})
        req, lim = d.get("requests", {}), d.get("limits", {})
        dflt = f"{req.get('memory', '-')}/{lim.get('memory', '-')}"
        s = report["suggested"][name]
        sugg = f"{s['requests.memory']}/{s['limits.memory']}"
        print(f"{name:7} {after['processes']:>5} {idle['rss_mib']:>9} {idle['pss_mib']:>9} "
              f"{after['rss_mib']:>9} {after['pss_mib']:>9} {dflt:>18} {sugg:>20}")
    r = report["after_traffic"]["redis"]
    print(f"redis used_memory {r['used_memory_mib']} MiB with {r['keys']} keys")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-agent footprint (see the module doc).")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = bench(args.messages, args.db, args.concurrency)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
