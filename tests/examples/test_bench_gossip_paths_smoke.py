"""benchmarks/bench_gossip_paths.py runs end to end on a tiny run (the paths without Ray; tests/runtime/
test_gossip_pool.py runs the Ray ones), and every nodes path ends with the same bits and bytes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gossip_paths.py"


def test_a_tiny_run_prints_every_path_with_the_baselines_bits():
    done = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "2", "--nodes", "6", "--local"],
                          capture_output=True, text=True, timeout=240, cwd=SCRIPT.parents[1])

    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^(dpsgd|choco top-k 10%)\s+(.+?)\s+[\d.]+\s+[\d.]+\s+([\d,]+)\s+(True|False|-)$", done.stdout,
                      re.MULTILINE)
    assert len(rows) == 6, done.stdout
    assert {same for *_, same in rows} == {"True", "-"}
    dense, compressed = ({size for strategy, _, size, _ in rows if strategy == name} for name in
                         ("dpsgd", "choco top-k 10%"))
    assert len(dense) == len(compressed) == 1  # every path counts the same bytes
    assert int(compressed.pop().replace(",", "")) < int(dense.pop().replace(",", "")) / 4
