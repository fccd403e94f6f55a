"""Short webhook benchmark (``python -m tests.bench.webhook`` is the full one).

Checks what must hold on any machine: every server answers every request, and the real web
tier and baseline 2 queue exactly one task per 200 (none lost). The figures are printed (run
with ``-s``); the targets are judged on the full run, see tests/bench/README.md.
"""

from __future__ import annotations

import shutil

import pytest

from tests.bench.webhook import bench, print_report, ratios

pytestmark = pytest.mark.bench

CONNECTIONS = 32


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_webhook_quick() -> None:
    report = bench([250.0, 1000.0], 1.5, 2.0, CONNECTIONS, profile=False, keep=None)
    report["ratios"] = ratios(report)
    print_report(report)
    assert set(report["results"]) == {"bare", "fastapi", "bot"}
    for name, rows in report["results"].items():
        for row in rows:
            assert row["accepted"] > 0, (name, row)
            if row["mode"] != "saturation":
                assert row["status"] == {"200": row["sent"]}, (name, row)
                assert not row["errors"], (name, row)
            else:
                assert row["errors"] == 0, (name, row)
            if name != "bare":
                assert row["lost"] == 0, (name, row)
                limit = CONNECTIONS if row["mode"] == "saturation" else 0
                assert row["unanswered_but_queued"] <= limit, (name, row)
