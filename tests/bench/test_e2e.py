"""Short end-to-end benchmark (``python -m tests.bench.e2e`` is the full one): every message
answered exactly once at a steady rate and in a burst; the latencies are printed (``-s``)."""

from __future__ import annotations

import shutil

import pytest

from tests.bench.e2e import bench, print_report

pytestmark = pytest.mark.bench


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_e2e_quick() -> None:
    db = "postgres" if shutil.which("pg_ctlcluster") else "sqlite"
    report = bench(rate=10.0, seconds=2.0, burst=60, concurrency=2, rate_limit=10_000.0,
                   users=50, db=db)
    print_report(report)
    for row in report["results"]:
        assert row["unanswered"] == 0, row
        assert row["duplicates"] == 0, row
        assert row["answered"] == row["messages"], row
