"""A two-node local Ray cluster (ray.cluster_utils): workers spread over both nodes and the result is unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_simulation_runs_across_two_nodes_with_unchanged_result(tmp_path):
    # Its own process: a Ray driver joins one cluster at a time, and the test session holds the shared local one.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    completed = subprocess.run([sys.executable, str(ROOT / "tests" / "runtime" / "ray_cluster_run.py"), str(tmp_path)],
                               capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "nodes 2" in completed.stdout
    assert "identical True" in completed.stdout
