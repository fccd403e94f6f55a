"""Per-agent footprint: ``python -m tests.bench.footprint [--messages 300] [--db postgres]
[--concurrency 2] [--slots 1,4,8] [--baseline-ref COMMIT]``.

Starts one agent's processes as real processes (``bot.devstack.LocalStack``) with the
operator's defaults: Redis, the web tier (uvicorn, one process), the worker (``python -m
bot.worker``: Celery's threads pool, ``--concurrency`` tasks at once in one process), with the
local fakes of Meta and OpenAI. Memory
is read from /proc: RSS, and PSS from ``smaps_rollup`` (pages shared between processes of a part
counted once, which is what the container's cgroup is charged). Measured:

- idle, 5 s after start;
- after ``--messages`` answered messages (imports done on first use, connection pools, caches,
  and Redis holding the bot's keys: de-duplication claims, rate-limit buckets);
- the retention purge, ``released purge`` run once after the traffic as the agent's CronJob runs
  it: its peak RSS while it runs (it holds nothing between runs, so it is not in the total);
- with ``--slots 1,4,8``, the worker again at each of these concurrencies after the same
  traffic (a stack of its own each): the cost of one more concurrent slot is the PSS
  difference to the smallest concurrency measured, divided by the extra slots.

The total is the PSS of the parts that stay resident (web, worker, Redis), printed with its
ratio to the figure of the issue that asked for this (447 MiB, ``TODAY_MIB``) and, with
``--baseline-ref``, to the same benchmark of that commit measured now on this machine (its tree
is checked out in a temporary git worktree and runs its own ``tests.bench.footprint``):
``--baseline-ref af6cd3d`` is the last commit with the prefork worker and the beat Deployment,
so the old configuration is measured in the same run. The purge's peak is printed beside the
total, and added to it for the hour's minute while its Job runs.

Prints the figures beside the operator's defaults (``released.agent.resources``) and a
suggestion derived from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bot.devstack import LocalStack
from released.fakes import FakeMeta
from tests.bench._common import REPO, children, machine, memory_kib, mib, tree_memory_kib
from tests.bench.e2e import measure, stack

#: The resident parts of one agent (the purge runs and exits).
PARTS = ("web", "worker", "redis")
#: PSS of one client's bot when issue 11 was filed (web 79, worker 259, beat 99, Redis 7).
TODAY_MIB = 447.0
TARGET_MIB = 160.0


def snapshot(local: LocalStack) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in PARTS:
        proc = local.processes.get(name)
        if proc is None:
            continue
        pids = [proc.pid, *children(proc.pid)]
        total = tree_memory_kib(pids)
        out[name] = {
            "processes": len(pids),
            "threads": sum(_threads(p) for p in pids),
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


def _threads(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_purge(local: LocalStack) -> dict[str, Any]:
    """``released purge`` once with the stack's environment: its peak RSS and run time."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "purge"], env=local.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"released purge failed: {stderr[-2000:]}")
    return {"peak_rss_mib": mib(usage.ru_maxrss), "seconds": round(time.monotonic() - started, 2)}


def defaults(concurrency: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "operator"))
    from released.agent.resources import DEFAULT_RESOURCES, worker_default_resources

    out = {str(k): v for k, v in DEFAULT_RESOURCES.items()}
    out["worker"] = worker_default_resources(concurrency)
    return out


def suggest(after: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Request: measured PSS after traffic + 25 %, rounded up to 16 MiB; limit: 2x request."""
    out = {}
    for name, row in after.items():
        need = row["pss_mib"] * 1.25
        request = int(-(-need // 16) * 16)
        out[name] = {"requests.memory": f"{request}Mi", "limits.memory": f"{2 * request}Mi"}
    return out


def _one_stack(workdir: Path, messages: int, db: str, concurrency: int,
               with_idle: bool) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with stack(workdir, concurrency, 10_000.0, db) as local:
        if with_idle:
            time.sleep(5.0)
            report["idle"] = snapshot(local)
        meta = FakeMeta.attach(local.urls["fake_meta"])
        row = measure(local, meta, messages, 50.0, 100, 120)
        report["traffic"] = {k: row[k] for k in ("messages", "answered", "duplicates")}
        time.sleep(2.0)
        report["after_traffic"] = snapshot(local)
        if with_idle:
            report["purge"] = run_purge(local)
    return report


def bench(
    messages: int, db: str, concurrency: int, slots: Sequence[int] = ()
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="released-bench-footprint-"))
    report: dict[str, Any] = {"machine": machine(), "worker_concurrency": concurrency, "db": db}
    try:
        report.update(_one_stack(workdir / "main", messages, db, concurrency, with_idle=True))
        rows = {concurrency: {"concurrency": concurrency, "traffic": report["traffic"],
                              "worker": report["after_traffic"]["worker"]}}
        for n in sorted(set(slots) - {concurrency}):
            more = _one_stack(workdir / f"slots-{n}", messages, db, n, with_idle=False)
            rows[n] = {"concurrency": n, "traffic": more["traffic"],
                       "worker": more["after_traffic"]["worker"]}
        if len(rows) > 1:
            report["slots"] = slot_costs(list(rows.values()))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["total_pss_mib"] = round(sum(r["pss_mib"] for r in report["after_traffic"].values()), 1)
    report["defaults"] = defaults(concurrency)
    report["suggested"] = suggest(report["after_traffic"])
    return report


def slot_costs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worker's PSS at each concurrency, and per extra slot against the smallest one."""
    rows = sorted(rows, key=lambda r: r["concurrency"])
    low = rows[0]
    out = []
    for row in rows:
        extra = row["concurrency"] - low["concurrency"]
        pss = row["worker"]["pss_mib"]
        out.append({
            "concurrency": row["concurrency"],
            "traffic": row["traffic"],
            "worker_pss_mib": pss,
            "worker_threads": row["worker"]["threads"],
            "mib_per_extra_slot": (
                round((pss - low["worker"]["pss_mib"]) / extra, 2) if extra else None
            ),
        })
    return out


def baseline(ref: str, messages: int, db: str) -> dict[str, Any]:
    """The footprint benchmark of commit ``ref``, run now from a temporary worktree of it."""
    tree = Path(tempfile.mkdtemp(prefix="released-bench-baseline-"))
    out = tree / "report.json"
    try:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree / "src"),
                        ref], check=True, capture_output=True)
        env = dict(os.environ)
        src = tree / "src"
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(src / "operator")])
        subprocess.run([sys.executable, "-m", "tests.bench.footprint", "--messages",
                        str(messages), "--db", db, "--json", str(out)],
                       cwd=src, env=env, check=True, timeout=900)
        data: dict[str, Any] = json.loads(out.read_text())
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                        str(tree / "src")], check=False, capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
    after = data["after_traffic"]
    data["ref"] = ref
    data["total_pss_mib"] = round(sum(r["pss_mib"] for r in after.values()), 1)
    return data


def print_report(report: dict[str, Any]) -> None:
    print("\nmachine:", json.dumps(report["machine"]))
    print(f"db {report['db']}, worker threads pool, concurrency {report['worker_concurrency']}, "
          f"traffic {json.dumps(report['traffic'])}")
    print(f"{'part':7} {'procs':>5} {'threads':>7} {'idle RSS':>9} {'idle PSS':>9} "
          f"{'after RSS':>9} {'after PSS':>9} {'default req/limit':>18} "
          f"{'suggested req/limit':>20}")
    for name in PARTS:
        idle, after = report["idle"].get(name), report["after_traffic"].get(name)
        if idle is None or after is None:
            continue
        d = report["defaults"].get(name, {})
        req, lim = d.get("requests", {}), d.get("limits", {})
        dflt = f"{req.get('memory', '-')}/{lim.get('memory', '-')}"
        s = report["suggested"][name]
        sugg = f"{s['requests.memory']}/{s['limits.memory']}"
        print(f"{name:7} {after['processes']:>5} {after['threads']:>7} {idle['rss_mib']:>9} "
              f"{idle['pss_mib']:>9} {after['rss_mib']:>9} {after['pss_mib']:>9} {dflt:>18} "
              f"{sugg:>20}")
    r = report["after_traffic"]["redis"]
    print(f"redis used_memory {r['used_memory_mib']} MiB with {r['keys']} keys")
    purge = report.get("purge")
    if purge:
        d = report["defaults"].get("purge", {})
        print(f"purge (CronJob run, not resident): peak RSS {purge['peak_rss_mib']} MiB in "
              f"{purge['seconds']} s; default {d.get('requests', {}).get('memory', '-')}/"
              f"{d.get('limits', {}).get('memory', '-')}")
    total = report["total_pss_mib"]
    print(f"total PSS after traffic (web + worker + redis): {total} MiB = "
          f"{total / TODAY_MIB:.2f}x the {TODAY_MIB:g} MiB of issue 11 (target <= "
          f"{TARGET_MIB:g} MiB: {'met' if total <= TARGET_MIB else 'NOT met'})")
    if purge:
        print(f"while the purge Job runs: {total + purge['peak_rss_mib']:.1f} MiB (its peak RSS "
              "added; it holds nothing between runs)")
    for row in report.get("slots") or ():
        cost = row["mib_per_extra_slot"]
        print(f"worker at concurrency {row['concurrency']:>2}: {row['worker_pss_mib']:>6} MiB PSS, "
              f"{row['worker_threads']:>2} threads"
              + (f", {cost} MiB per extra slot (target <= 10)" if cost is not None else "")
              + f"  {json.dumps(row['traffic'])}")
    base = report.get("baseline")
    if base:
        print(f"\nbaseline {base['ref']} measured now (its own benchmark):")
        for name, row in base["after_traffic"].items():
            mine = report["after_traffic"].get(name)
            ratio = f"{mine['pss_mib'] / row['pss_mib']:.2f}x" if mine else "gone"
            print(f"  {name:7} {row['processes']:>2} processes, {row['pss_mib']:>7} MiB PSS -> "
                  f"{mine['pss_mib'] if mine else 0:>7} MiB ({ratio})")
        print(f"  total   {base['total_pss_mib']} MiB -> {total} MiB "
              f"({total / base['total_pss_mib']:.2f}x)")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-agent footprint (see the module doc).")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2, help="the spec's default")
    parser.add_argument("--slots", type=_ints, default=(),
                        help="also measure the worker at these concurrencies (e.g. 1,4,8)")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--baseline-ref", help="also measure this commit now (git worktree)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = bench(args.messages, args.db, args.concurrency, args.slots)
    if args.baseline_ref:
        report["baseline"] = baseline(args.baseline_ref, args.messages, args.db)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
