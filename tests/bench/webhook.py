"""Webhook benchmark: ``python -m tests.bench.webhook [--quick] [--profile]``.

Three servers, one at a time, each ``uvicorn APP`` in one process with the web tier's production
flags, on 127.0.0.1, against one real ``redis-server`` (append-only, as the operator runs it):

- ``bot``: the real web tier, ``bot.main:app``, with its Redis as de-dup store and Celery broker;
- ``bare``: baseline 1, an ASGI app that reads the body and answers 200;
- ``fastapi``: baseline 2, a hand-written FastAPI endpoint: signature check, ``json.loads``,
  one ``LPUSH`` with ``redis.asyncio``.

Load comes from other processes: ``tests.bench.loadgen`` (open loop at a constant rate,
latency from the scheduled send time) at each ``--rates`` step, then ``wrk`` (closed loop,
``-c`` connections; ``loadgen --rate 0`` when wrk is not installed) for the saturation
throughput. Every body is a signed text-message webhook with its own wamid. No Celery worker
runs, so nothing is lost only if the ``celery`` list (``bench:baseline`` for baseline 2) holds
exactly one task per 200 answered; that is checked after every step.

``--profile`` then runs py-spy on the bot under saturation and prints where its time goes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bot.whatsapp.simulate import signed_delivery, text_message_payload
from tests.bench._common import (
    REPO,
    bench_env,
    cpu_seconds,
    machine,
    start_uvicorn,
    stop_process,
)
from tests.bench.baselines import BASELINE_QUEUE
from tests.servers import start_redis

PHONE_NUMBER_ID = "100000000000001"
APP_SECRET = "0123456789abcdef0123456789abcdef"  # shaped like a Meta app secret (32 hex)
WRK_SCRIPT = Path(__file__).with_name("wrk_signed.lua")


@dataclass
class Target:
    name: str
    app: str
    queue: str | None  # the Redis list that must hold one entry per 200, or None
    factory: bool = False
    env: dict[str, str] = field(default_factory=dict)


def targets(redis_url: str, workdir: Path) -> list[Target]:
    bot_env = {
        "PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "META_APP_SECRET": APP_SECRET,
        "META_VERIFY_TOKEN": "bench-verify-token",
        "META_ACCESS_TOKEN": "bench-access-token",
        "OPENAI_API_KEY": "bench-openai-key",
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
        "LOG_FORMAT": "json",
    }
    baseline_env = {
        "BENCH_REDIS_URL": redis_url, "BENCH_APP_SECRET": APP_SECRET, "BENCH_QUEUE": BASELINE_QUEUE
    }
    return [
        Target("bare", "tests.bench.baselines:bare", None),
        Target("fastapi", "tests.bench.baselines:minimal_fastapi", BASELINE_QUEUE, True,
               baseline_env),
        Target("bot", "bot.main:app", "celery", False, bot_env),
        # Not in the default run (--only): the bot with a proposed change, see variants.py.
        Target("bot+async_deps", "tests.bench.variants:async_deps", "celery", True, bot_env),
        Target("bot+no_access_log", "tests.bench.variants:no_access_log", "celery", True,
               bot_env),
        Target("bot+async_deps+no_access_log", "tests.bench.variants:async_deps_no_access_log",
               "celery", True, bot_env),
        Target("bot+async_deps+no_access_log+warning",
               "tests.bench.variants:async_deps_no_access_log", "celery", True,
               {**bot_env, "LOG_LEVEL": "WARNING"}),
    ]


DEFAULT_TARGETS = ("bare", "fastapi", "bot")


def write_bodies(path: Path, count: int) -> Path:
    """``count`` signed webhook bodies with unique wamids, one ``sig\\tjson`` per line."""
    with path.open("wb") as out:
        for i in range(count):
            payload = text_message_payload(
                PHONE_NUMBER_ID, f"Hello number {i}, what are your opening hours?",
                wa_id=f"3460{i % 5000:07d}",
            )
            body, headers = signed_delivery(payload, APP_SECRET)
            out.write(headers["X-Hub-Signature-256"].encode() + b"\t" + body + b"\n")
    return path


def run_loadgen(url: str, bodies: Path, rate: float, duration: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tests.bench.loadgen", url, str(bodies),
           "--rate", str(rate), "--duration", str(duration), "--connections", "64"]
    out = subprocess.run(cmd, env=bench_env(), cwd=REPO, capture_output=True, text=True,
                         timeout=duration + 60, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["accepted"] = int(result["status"].get("200", 0))
    return result


def run_saturation(url: str, bodies: Path, duration: float, connections: int) -> dict[str, Any]:
    """Closed loop at ``connections`` connections: wrk when installed, else loadgen."""
    wrk = shutil.which("wrk")
    if wrk is None:
        result = run_loadgen(url, bodies, 0, duration)
        result["tool"] = "loadgen (closed loop)"
        return result
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
           "-s", str(WRK_SCRIPT), url, "--", str(bodies), "1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                         timeout=duration + 120, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.split(" ", 1)[1])
    bad = raw["status"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    accepted = raw["requests"] - raw["status"]
    seconds = raw["duration_us"] / 1e6
    return {
        "tool": f"wrk -t1 -c{connections}",
        "sent": raw["requests"],
        "accepted": accepted,
        "errors": bad,
        "wrapped": raw["wrapped"],
        "elapsed": round(seconds, 3),
        "accepted_per_s": round(accepted / seconds, 1),
        "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000,
    }


def cpu_per_request(pid: int, cpu_before: float, result: dict[str, Any]) -> float | None:
    """CPU time the server process spent per answered request during a step, in µs.

    Unlike throughput, this hardly moves when other processes share the cores, so it is the
    figure to compare between runs on a busy machine."""
    if not result["accepted"]:
        return None
    return round((cpu_seconds(pid) - cpu_before) / result["accepted"] * 1e6, 1)


def check_queue(r: redis.Redis, target: Target, result: dict[str, Any]) -> None:
    """Record the queue length and whether it equals the 200s; then empty Redis."""
    if target.queue is not None:
        queued = int(r.llen(target.queue))
        result["queued"] = queued
        # Lost: answered 200 but not queued. Queued but not counted: requests wrk left in
        # flight when its clock ran out (at most one per connection; none for loadgen).
        result["lost"] = max(0, result["accepted"] - queued)
        result["unanswered_but_queued"] = max(0, queued - result["accepted"])
        if target.queue == "celery" and queued:
            # The entries are Celery task messages for bot.tasks.process_message.
            sample = json.loads(r.lindex(target.queue, 0))
            result["task"] = sample["headers"]["task"]
    r.flushall()


def py_spy_profile(pid: int, seconds: int, out_dir: Path) -> Path | None:
    """``py-spy record`` of ``pid`` for ``seconds`` as collapsed stacks (and an SVG)."""
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    raw = out_dir / "bot-web.collapsed.txt"
    svg = out_dir / "bot-web.svg"
    for fmt, path in (("raw", raw), ("flamegraph", svg)):
        subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250",
                          "--nonblocking", "-f", fmt, "-o", str(path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return raw


_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::\d+)?\)$")


#: Leaf frames of a thread that waits (idle pool threads, the event loop's poll).
_IDLE_LEAVES = (
    "Condition.wait (", "wait (threading.py", "select (selectors.py", "Runner.run (",
    "poll (selectors.py", "EpollSelector.select (", "PollSelector.select (", "sleep (",
)


def summarize_profile(raw: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function (file), self %, inclusive %) of busy samples from py-spy's collapsed stacks.

    Samples whose leaf is a wait (idle thread-pool threads, the loop polling) are left out, so
    the percentages are shares of the time the process spends running Python.
    """
    selfs: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame.strip())
            name = frame.strip()
            if m:
                name = f"{m['func']} ({'/'.join(m['file'].split('/')[-2:])})"
            frames.append(name)
        if not frames or frames[-1].startswith(_IDLE_LEAVES):
            total -= count
            continue
        selfs[frames[-1]] += count
        for name in set(frames):
            incl[name] += count
    if not total:
        return []
    rows = [(name, 100 * selfs[name] / total, 100 * incl[name] / total) for name in incl]
    rows.sort(key=lambda x: -x[2])
    return rows[:top]


def bench(rates: list[float], duration: float, sat_duration: float, connections: int,
          profile: bool, keep: Path | None, only: list[str] | None = None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="released-bench-webhook-"))
    (workdir / "redis").mkdir()
    server = start_redis(workdir=workdir / "redis")
    r = redis.Redis.from_url(server.url)
    report: dict[str, Any] = {"machine": machine(), "rates": rates, "duration": duration,
                              "saturation_duration": sat_duration, "results": {}}
    body_seq = 0

    def bodies(count: int) -> Path:
        nonlocal body_seq
        body_seq += 1
        return write_bodies(workdir / f"bodies-{body_seq}.txt", count)

    try:
        for target in targets(server.url, workdir):
            if target.name not in (only or DEFAULT_TARGETS):
                continue
            proc, port = start_uvicorn(target.app, bench_env(**target.env),
                                       workdir / f"{target.name}.log", factory=target.factory)
            url = f"http://127.0.0.1:{port}/webhook"
            rows: list[dict[str, Any]] = []
            try:
                run_loadgen(url, bodies(400), 400, 1.0)  # warm up (imports, connections)
                r.flushall()
                for rate in rates:
                    cpu = cpu_seconds(proc.pid)
                    result = run_loadgen(url, bodies(int(rate * duration)), rate, duration)
                    result["cpu_us_per_request"] = cpu_per_request(proc.pid, cpu, result)
                    result["mode"] = f"{rate:g}/s"
                    check_queue(r, target, result)
                    rows.append(result)
                    print(target.name, json.dumps(result), flush=True)
                sat_bodies = bodies(int(12_000 * sat_duration))
                cpu = cpu_seconds(proc.pid)
                result = run_saturation(url, sat_bodies, sat_duration, connections)
                result["cpu_us_per_request"] = cpu_per_request(proc.pid, cpu, result)
                result["mode"] = "saturation"
                check_queue(r, target, result)
                rows.append(result)
                print(target.name, json.dumps(result), flush=True)
                if profile and target.name == "bot":
                    raw = py_spy_profile(proc.pid, int(sat_duration), workdir)
                    time.sleep(1.0)
                    run_saturation(url, bodies(int(12_000 * sat_duration)), sat_duration,
                                   connections)
                    r.flushall()
                    time.sleep(2.0)
                    if raw is not None and raw.exists():
                        report["profile"] = summarize_profile(raw)
                        report["profile_files"] = [str(raw), str(raw.with_name("bot-web.svg"))]
            finally:
                stop_process(proc)
            report["results"][target.name] = rows
    finally:
        r.close()
        server.stop()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for path in workdir.glob("*"):
                if path.suffix in (".log", ".svg") or path.name.endswith(".collapsed.txt"):
                    shutil.copy(path, keep / path.name)
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per mode: bot vs each baseline (throughput ratio and p99 ratio)."""
    out = []
    res = report["results"]
    for i, row in enumerate(res.get("bot", [])):
        entry: dict[str, Any] = {"mode": row["mode"]}
        for base in ("bare", "fastapi"):
            if base in res and i < len(res[base]):
                b = res[base][i]
                entry[f"rps_vs_{base}"] = round(row["accepted_per_s"] / b["accepted_per_s"], 3)
                entry[f"p99_vs_{base}"] = round(row["p99_ms"] / b["p99_ms"], 2)
                if row.get("cpu_us_per_request") and b.get("cpu_us_per_request"):
                    entry[f"cpu_vs_{base}"] = round(
                        row["cpu_us_per_request"] / b["cpu_us_per_request"], 2)
        out.append(entry)
    return out


def print_report(report: dict[str, Any]) -> None:
    print("\nmachine:", json.dumps(report["machine"]))
    header = f"{'server':8} {'mode':>11} {'accepted/s':>10} {'p50 ms':>8} {'p99 ms':>8} " \
             f"{'max ms':>8} {'200s':>7} {'queued':>7} {'lost':>5} {'errors':>6} {'cpu µs/req':>10}"
    print(header)
    for name, rows in report["results"].items():
        for row in rows:
            errors = row.get("errors")
            nerr = sum(errors.values()) if isinstance(errors, dict) else errors
            nerr += sum(v for k, v in row.get("status", {}).items() if k != "200")
            print(f"{name:8} {row['mode']:>11} {row['accepted_per_s']:>10.0f} "
                  f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['max_ms']:>8.1f} "
                  f"{row['accepted']:>7} {row.get('queued', '-'):>7} {row.get('lost', '-'):>5} "
                  f"{nerr:>6} {row.get('cpu_us_per_request') or '-':>10}")
    print("\nbot vs baselines (accepted/s ratio, p99 ratio, CPU per request ratio):")
    for entry in ratios(report):
        print("  " + json.dumps(entry))
    if report.get("profile"):
        print("\npy-spy, bot web process at saturation (self %, inclusive %):")
        for name, self_pct, incl_pct in report["profile"]:
            print(f"  {self_pct:5.1f} {incl_pct:5.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Webhook benchmark (see the module doc).")
    parser.add_argument("--rates", default="250,500,1000,2000")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--saturation", type=float, default=10.0, help="seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="rates 250,1000; 3 s each")
    parser.add_argument("--profile", action="store_true", help="py-spy the bot at saturation")
    parser.add_argument("--keep", type=Path, help="copy logs and profiles here")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--only", help="comma-separated servers: bare,fastapi,bot")
    args = parser.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",")]
    duration, sat = args.duration, args.saturation
    if args.quick:
        rates, duration, sat = [250.0, 1000.0], 3.0, 3.0
    report = bench(rates, duration, sat, args.connections, args.profile, args.keep,
                   args.only.split(",") if args.only else None)
    report["ratios"] = ratios(report)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
