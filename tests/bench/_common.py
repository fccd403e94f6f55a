"""Shared helpers of the benchmarks: machine facts, percentiles, process memory, servers.

Every server binds 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bot.serving import uvicorn_flags
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]

#: The web tier's uvicorn flags in production (``bot.serving``, what the operator's web
#: container runs), host aside; every server under test gets the same ones.
UVICORN_FLAGS = uvicorn_flags()


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory and Python version of this machine."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg()[0],
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def bench_env(**extra: str) -> dict[str, str]:
    """The environment with the repository (and the operator's source root) importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), str(REPO / "operator"), env.get("PYTHONPATH")])
    )
    env.update(extra)
    return env


def wait_http_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start_uvicorn(
    app: str, env: dict[str, str], log: Path, *, factory: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """``uvicorn APP`` (one process, production flags) on a free 127.0.0.1 port."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    args += UVICORN_FLAGS
    if factory:
        args.append("--factory")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    wait_http_port(port, proc)
    return proc, port


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


# -- memory and CPU from /proc ---------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (via /proc/PID/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.append(int(child))
                    todo.append(int(child))
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private) of one process, in KiB (smaps_rollup; RSS from status)."""
    out = {"rss": 0, "pss": 0, "uss": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "Pss":
                out["pss"] = int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                out["uss"] += int(rest.split()[0])
    return out


def tree_memory_kib(pids: Iterable[int]) -> dict[str, int]:
    total = {"rss": 0, "pss": 0, "uss": 0}
    for pid in pids:
        for key, value in memory_kib(pid).items():
            total[key] += value
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def mib(kib: float) -> float:
    return round(kib / 1024, 1)
