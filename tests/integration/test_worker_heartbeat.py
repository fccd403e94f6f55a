"""The worker's liveness: a real worker (``python -m bot.worker``, the threads pool) refreshes its
heartbeat file, and the probe the operator gives its pod (``WORKER_PROBE_SCRIPT``) passes while
it does and fails once it stops (a frozen process here, as a hung one would be)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from whatsapp_operator.builders.workloads import (
    WORKER_HEARTBEAT_FILE,
    WORKER_HEARTBEAT_MAX_AGE,
    WORKER_PROBE_SCRIPT,
)

from tests.bench._common import bench_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def probe(path: Path) -> bool:
    """The pod's liveness/readiness command, pointed at ``path``."""
    script = WORKER_PROBE_SCRIPT.replace(WORKER_HEARTBEAT_FILE, str(path))
    return subprocess.run(["sh", "-c", script], check=False).returncode == 0


def wait_for(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.2)


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    heartbeat = tmp_path / "worker-heartbeat"
    env = bench_env(
        REDIS_URL=redis_url.rsplit("/", 1)[0] + "/7",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        META_ACCESS_TOKEN="local-token-for-the-heartbeat-test",
        OPENAI_API_KEY="sk-local-heartbeat-test",
        WORKER_HEARTBEAT_FILE=str(heartbeat),
        WORKER_METRICS_PORT="0",
    )
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.worker", "--concurrency=2", "--without-gossip",
         "--without-mingle", "-n", "hb@%h"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc, heartbeat
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_the_heartbeat_keeps_the_probe_passing_and_stops_with_the_worker(
    worker: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, heartbeat = worker
    wait_for("heartbeat file", heartbeat.exists, timeout=90)
    assert probe(heartbeat)

    # Refreshed while the worker runs: an old file becomes fresh again within a period.
    old = time.time() - 10 * WORKER_HEARTBEAT_MAX_AGE
    os.utime(heartbeat, (old, old))
    assert not probe(heartbeat)
    wait_for("refreshed heartbeat", lambda: probe(heartbeat), timeout=30)

    # A worker that stops running stops refreshing it: the probe fails, Kubernetes restarts it.
    os.killpg(proc.pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.utime(heartbeat, (old, old))
    time.sleep(15)  # more than a heartbeat period
    assert not probe(heartbeat)
    os.killpg(proc.pid, signal.SIGCONT)
    wait_for("heartbeat after the worker runs again", lambda: probe(heartbeat), timeout=30)
    assert proc.poll() is None
