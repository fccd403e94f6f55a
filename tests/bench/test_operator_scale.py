"""Short operator benchmark on the test control plane (N=10; the full one is
``python -m tests.bench.operator_scale``): every child exists and every agent is Ready, for the
baseline and the operator; the operator's memory and idle CPU are measured, and a restart with
the same agents writes nothing (``-s`` prints the figures)."""

from __future__ import annotations

import pytest

from tests.bench.operator_scale import bench, print_report
from tests.k8s_control_plane import binaries_ready

pytestmark = pytest.mark.bench


@pytest.mark.skipif(not binaries_ready(), reason="the test control plane is not built")
def test_operator_quick() -> None:
    report = bench([10], timeout=240.0, idle=3.0)
    print_report(report)
    base, op = report["results"]
    assert base["ready_s"] > 0 and op["ready_s"] > 0
    assert op["objects"] == base["objects"]
    assert op["rss_peak_mib"] > 0
    assert op["restart"]["objects_compared"] >= op["objects"]
    assert op["restart"]["objects_written"] == 0, op["restart"]
