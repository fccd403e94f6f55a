"""``hack/deps.sh``: the test command installs what it needs, and nothing on a prepared machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="hack/deps.sh installs Debian packages as root")
def test_a_second_run_installs_nothing() -> None:
    # hack/test.sh has just run it (or the machine was prepared by hand): all is there.
    env = {**os.environ, "PYTHON": sys.executable}
    first = subprocess.run(
        ["bash", "hack/deps.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900, check=False,
    )
    assert first.returncode == 0, first.stderr
    second = subprocess.run(
        ["bash", "hack/deps.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert second.returncode == 0, second.stderr
    assert "apt-get" not in second.stderr
    assert "pip install" not in second.stderr
    assert "go build" not in second.stderr
    assert "ready in" in second.stderr.splitlines()[-1]
