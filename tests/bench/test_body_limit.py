"""Short oversized-body probe (``python -m tests.bench.body_limit`` is the full one).

Checks what must hold on any machine: a chunked POST far over the cap is answered 413 long
before it ends, and the web process is still up. The peak memory figures are printed (run
with ``-s``), as a ratio to the peak after ordinary deliveries; tests/bench/README.md has them.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.bench.body_limit import probe

pytestmark = pytest.mark.bench


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_chunked_oversized_body_is_refused_while_it_streams() -> None:
    report = probe(64)
    print(json.dumps(report, indent=2))
    assert report["status"] == 413
    assert report["server_alive"]
    assert report["sent_mib"] < 64  # refused before the sender was done
