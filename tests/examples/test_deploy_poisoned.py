"""A deployed FedBuff run with one client that pushes 1e38 for every task: `fl server` and two honest `fl client`
processes finish, and the model stays finite."""

from __future__ import annotations

import json
import subprocess
import threading

import grpc
import torch

from fl.config import load_config
from fl.params import ParamSpec
from fl.scenario import build_data, build_model_fn
from tests.examples.test_deploy import THREE_CLIENTS, fl_command, start_server
from transport.codecs.cast import IdentityCodec
from transport.grpc_client import DONE, WAIT, FederationClient
from transport.messages import TRAIN, Result

CONFIG = """
name = "poisoned"
rounds = 6
""" + THREE_CLIENTS + """
[client]
steps = 2
[strategy]
name = "fedbuff"
concurrency = 3
buffer_size = 2
[transport]
timeout_seconds = 30
"""
ATTACKER = 2


def push_poison(address: str, num_samples: int, num_params: int, refusals: list[str]) -> None:
    """Client 2 joins and answers every task it gets with an update of 1e38s, until the run ends."""
    poison = IdentityCodec().encode(torch.full((num_params,), 1e38), {})[0]
    with FederationClient(address, client_id=ATTACKER, timeout_seconds=30) as connection:
        connection.join(ATTACKER, wait_for_server=True)
        while (pulled := connection.pull_task(ATTACKER, wait_seconds=5)) != DONE:
            if pulled == WAIT:
                continue
            result = Result(TRAIN, pulled.task.version, ATTACKER, num_samples, {"loss": 0.1, "steps": 2.0, "lr": 0.05},
                            poison)
            try:
                connection.push_result(pulled.task_id, result)
            except grpc.RpcError as error:
                refusals.append(f"{error.code().name}: {error.details()}")


def test_the_honest_clients_of_a_run_with_a_1e38_pusher_finish_and_the_model_stays_finite(tmp_path):
    config_path = tmp_path / "poisoned.toml"
    config_path.write_text(CONFIG)
    config = load_config(config_path)
    data = build_data(config.data, config.seed)
    num_params = ParamSpec.from_module(build_model_fn(config.model, data)()).num_params
    server, address = start_server(config_path, tmp_path)
    refusals: list[str] = []
    attacker = threading.Thread(target=push_poison, args=(address, data.train_sizes()[ATTACKER], num_params, refusals))
    attacker.start()
    honest = [subprocess.Popen(fl_command("client", "--server", address, "--client-id", str(i), "--timeout", "60"),
                               stderr=subprocess.PIPE, text=True) for i in range(2)]

    assert server.wait(timeout=120) == 0, server.stderr.read()
    logs = [c.stderr.read() for c in honest]
    assert [c.wait(timeout=30) for c in honest] == [0, 0], logs
    attacker.join(timeout=30)

    assert refusals and all("INVALID_ARGUMENT" in r and "max_update_norm" in r for r in refusals), refusals
    rows = [json.loads(line) for line in (tmp_path / "poisoned" / "metrics.jsonl").open()]
    assert len(rows) == 6 and sum(r["refused"] for r in rows) >= 1
    assert all(r["diverged"] == 0 for r in rows)  # no honest client was led astray
    params = torch.load(tmp_path / "poisoned" / "model.pt")["params"]
    assert torch.isfinite(params).all() and params.abs().max() < 10
    assert all("the server finished the run" in log for log in logs)
