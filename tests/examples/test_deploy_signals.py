"""SIGTERM ends `fl run` and `fl server` with exit 143 and one line; the clients of a stopped server hear why and exit
1 (never 0 with "finished", never an abort)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.examples.test_deploy import THREE_CLIENTS, fl_command, start_server

CONFIG = """
name = "long"
rounds = 500
""" + THREE_CLIENTS


def wait_for_rows(metrics: Path, timeout: float = 60.0) -> None:
    """Until the run has written a row."""
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_text().strip()):
        assert time.monotonic() < deadline, "the run wrote no row"
        time.sleep(0.2)


def test_sigterm_stops_a_server_with_143_and_its_clients_hear_why(tmp_path):
    config = tmp_path / "long.toml"
    config.write_text(CONFIG)
    server, address = start_server(config, tmp_path)
    clients = [subprocess.Popen(fl_command("client", "--server", address, "--client-id", str(i), "--timeout", "30"),
                                stderr=subprocess.PIPE, text=True) for i in range(3)]
    wait_for_rows(tmp_path / "long" / "metrics.jsonl")

    server.send_signal(signal.SIGTERM)

    assert server.wait(timeout=30) == 143
    assert server.stderr.read().strip().splitlines()[-1] == "fl: terminated (SIGTERM)"
    for client in clients:
        assert client.wait(timeout=30) == 1
        log = client.stderr.read()
        assert log.strip().splitlines()[-1] == "fl: error: ABORTED: the server stopped the run: the server was interrupted"
        assert "finished the run" not in log and "Traceback" not in log


def test_sigterm_stops_fl_run_with_143_and_no_traceback(tmp_path):
    config = tmp_path / "long.toml"
    config.write_text(CONFIG + '[runtime]\nbackend = "local"\n')
    run = subprocess.Popen(fl_command("run", str(config), "--quiet", "--set", f'output_dir="{tmp_path}"'),
                           stderr=subprocess.PIPE, text=True)
    wait_for_rows(tmp_path / "long" / "metrics.jsonl")

    run.send_signal(signal.SIGTERM)

    assert run.wait(timeout=30) == 143
    err = run.stderr.read()
    assert err.strip().splitlines()[-1] == "fl: terminated (SIGTERM)" and "Traceback" not in err
