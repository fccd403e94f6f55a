"""Memory attribution for a benchmarked process: put this directory first on PYTHONPATH.

With ``BENCH_TRACEMALLOC_OUT=/path/file`` set, SIGUSR2 starts tracemalloc (15 frames; tracing
from start-up would slow the imports past the liveness wait) and every SIGUSR1 writes the top
allocation sites since then, grouped by file, by line and by traceback, to that file. Used by
``python -m tests.bench.operator_scale --memory-probe``.
"""

from __future__ import annotations

import os
import signal
import tracemalloc

_OUT = os.environ.get("BENCH_TRACEMALLOC_OUT")

if _OUT:

    def _start(*_: object) -> None:
        tracemalloc.start(15)

    def _dump(*_: object) -> None:
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        total = sum(s.size for s in snap.statistics("filename"))
        lines = [f"total traced: {total / 2**20:.1f} MiB"]
        lines.append("== by file")
        for stat in snap.statistics("filename")[:30]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d}  {stat.traceback[0]}")
        lines.append("== by line")
        for stat in snap.statistics("lineno")[:40]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d}  {stat.traceback[0]}")
        lines.append("== by traceback (top 8)")
        for stat in snap.statistics("traceback")[:8]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d}")
            lines.extend("      " + str(frame) for frame in stat.traceback[-12:])
        with open(_OUT, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, _dump)
    signal.signal(signal.SIGUSR2, _start)
