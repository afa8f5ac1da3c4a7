"""benchmarks/bench_async_scale.py --quick runs end to end (its figures are not checked, only its plumbing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_async_scale.py"


def test_quick_run_prints_memory_and_throughput_tables():
    # a subprocess: the benchmark runs each configuration in a child process of its own, started from its __main__
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120,
                          cwd=SCRIPT.parents[1])

    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "== Memory: FedBuff K=10, 50 in flight" in out and "== Throughput:" in out
    memory_rows = re.findall(r"^\s+(100|400)\s+\d+\s+\d+\s+\d+\s+(-?[\d.]+)", out, re.MULTILINE)
    assert [registered for registered, _ in memory_rows] == ["100", "400"]
    assert "loop.busy + loop.tasks_started" in out and "timing.downloads.held (ledger)" in out
    # both strategies applied every update they were asked for: 4 rounds of 10, 4 versions of K = 10
    assert re.search(r"^local\s+FedAvg, 10/round\s+[\d.]+\s+[\d.]+\s+40\s+40\s", out, re.MULTILINE)
    assert re.search(r"^local\s+FedBuff, 50 in flight, K=10\s+[\d.]+\s+[\d.]+\s+40\s+\d+\s", out, re.MULTILINE)
    assert re.search(r"local: async/sync applied updates per wall second \d+\.\d\d", out)
