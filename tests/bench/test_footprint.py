"""Short footprint run (``python -m tests.bench.footprint`` is the full one): memory of an idle
and a used web process, worker (threads pool, 2 slots in one process) and Redis, and of one
purge run, printed with ``-s``."""

from __future__ import annotations

import shutil

import pytest

from tests.bench.footprint import PARTS, bench, print_report

pytestmark = pytest.mark.bench


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_footprint_quick() -> None:
    report = bench(messages=20, db="sqlite", concurrency=2)
    print_report(report)
    assert report["traffic"]["answered"] == 20
    for part in PARTS:
        row = report["after_traffic"][part]
        assert 0 < row["pss_mib"] <= row["rss_mib"], (part, row)
    assert report["after_traffic"]["worker"]["processes"] == 1  # its tasks run in threads
    assert report["purge"]["peak_rss_mib"] > 0
