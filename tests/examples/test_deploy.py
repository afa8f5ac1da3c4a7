"""Deployment without Ray: `fl server` and three `fl client` processes on 127.0.0.1, plain and with TLS and tokens."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from fl.config import load_config
from fl.simulation import run_simulation
from transport.grpc_client import FederationClient

THREE_CLIENTS = """
[data]
num_clients = 3
[sampling]
per_round = 3
[model]
hidden = [16]
"""  # the tables of a small deployment, after a config's top-level keys
CONFIG = """
name = "deploy"
rounds = 3
""" + THREE_CLIENTS + """
[strategy]
name = "scaffold"
[transport]
uplink = "ef21(topk:ratio=0.1)"
downlink = "ef21(topk:ratio=0.1)"
"""


def fl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fl.cli", *args]


def start_server(config: Path, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """The server on a port the OS picks; returns it and the address it prints."""
    server = subprocess.Popen(fl_command("server", "--config", str(config), "--listen", "127.0.0.1:0", "--quiet",
                                         "--set", f'output_dir="{tmp_path}"'), stderr=subprocess.PIPE, text=True)
    line = server.stderr.readline()
    match = re.search(r"listening on (127\.0\.0\.1:\d+);", line)
    assert match, line
    return server, match.group(1)


def run_clients(address: str, *extra: list[str]) -> list[subprocess.CompletedProcess]:
    clients = [subprocess.Popen(fl_command("client", "--server", address, "--client-id", str(i), "--timeout", "60",
                                           *(extra[i] if extra else [])), stderr=subprocess.PIPE, text=True)
               for i in range(3)]
    return [subprocess.CompletedProcess(c.args, c.wait(timeout=120), None, c.stderr.read()) for c in clients]


def test_three_client_processes_give_the_same_model_as_the_in_process_simulation(tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text(CONFIG)
    server, address = start_server(config, tmp_path)

    clients = run_clients(address)

    assert server.wait(timeout=60) == 0, server.stderr.read()
    assert all(c.returncode == 0 and "finished the run after 3 tasks" in c.stderr for c in clients)
    deployed = torch.load(tmp_path / "deploy" / "model.pt")["params"]
    simulated = run_simulation(load_config(config, ['runtime.backend="local"']), write=False, show_progress=False)
    assert torch.equal(deployed, simulated.global_params)
    first, *later = [json.loads(line)["bytes_down"] for line in (tmp_path / "deploy" / "metrics.jsonl").open()]
    whole = 3 * 4 * deployed.numel()  # three clients download the float32 model in round 1 (SCAFFOLD adds its c)
    assert all(first - b > 0.7 * whole for b in later)  # later, each client downloads one change: 10 % of entries


def test_tls_with_per_client_tokens_and_a_wrong_token_refused(tmp_path, certificate):
    cert, key = certificate
    secret = tmp_path / "secret"
    secret.write_text("a secret for this test\n")
    config = tmp_path / "deploy.toml"
    config.write_text(CONFIG.replace("rounds = 3", "rounds = 1") + f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
                      f'auth_secret_file = "{secret}"\n')
    tokens = [subprocess.run(fl_command("token", "--secret-file", str(secret), "--client-id", str(i)),
                             capture_output=True, text=True, check=True).stdout.strip() for i in range(3)]
    server, address = start_server(config, tmp_path)
    address = address.replace("127.0.0.1", "localhost")  # the name the certificate is issued for

    with FederationClient(address, client_id=0, token=tokens[0], root_cert_path=cert) as peek:
        welcome = peek.join(0).config
    assert "[transport]" in welcome and key not in welcome and cert not in welcome and str(secret) not in welcome

    intruder = subprocess.run(fl_command("client", "--server", address, "--client-id", "0", "--root-cert", cert,
                                         "--token", tokens[1]), capture_output=True, text=True, timeout=60)
    twin = subprocess.run(fl_command("client", "--server", address, "--client-id", "0", "--root-cert", cert,
                                     "--token", tokens[0]), capture_output=True, text=True, timeout=60)
    takes_over = [["--replace"], [], []]  # client 0's id is held by the peek's live session
    clients = run_clients(address, *[["--root-cert", cert, "--token", token, *takes_over[i]]
                                      for i, token in enumerate(tokens)])

    assert intruder.returncode == 1 and "UNAUTHENTICATED" in intruder.stderr
    assert twin.returncode == 1 and "ALREADY_EXISTS" in twin.stderr and "--replace" in twin.stderr
    assert all(c.returncode == 0 for c in clients), [c.stderr for c in clients]
    assert server.wait(timeout=60) == 0


def test_clients_started_before_the_server_wait_for_it(tmp_path):
    config = tmp_path / "late.toml"
    config.write_text(CONFIG.replace("rounds = 3", "rounds = 1").replace('uplink = "ef21(topk:ratio=0.1)"', ""))
    with socket.socket() as probe:  # a free port for the server to take once the clients are already calling
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    clients = [subprocess.Popen(fl_command("client", "--server", address, "--client-id", str(i), "--timeout", "60"),
                                stderr=subprocess.PIPE, text=True) for i in range(3)]
    time.sleep(2)

    server = subprocess.run(fl_command("server", "--config", str(config), "--listen", address, "--quiet",
                                       "--set", f'output_dir="{tmp_path}"'), capture_output=True, text=True, timeout=120)

    assert server.returncode == 0, server.stderr
    assert all(c.wait(timeout=60) == 0 for c in clients)
