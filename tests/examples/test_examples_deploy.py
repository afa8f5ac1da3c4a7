"""The deployment walkthrough's scripts run: a server and three clients on 127.0.0.1, plaintext and TLS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "examples" / "deploy"


@pytest.mark.parametrize("script", ["run_local.sh", "run_tls.sh"])
def test_deploy_script_runs_a_server_and_three_clients(script):
    if script == "run_tls.sh" and shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")

    completed = subprocess.run(["bash", str(DEPLOY / script), "2"], capture_output=True, text=True, timeout=180)

    assert completed.returncode == 0, completed.stderr[-2000:]
    output = completed.stdout + completed.stderr
    assert output.count("the server finished the run after 2 tasks") == 3
    assert "final accuracy" in output
