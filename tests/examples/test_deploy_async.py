"""An asynchronous strategy with real clients: `fl server` and three `fl client` processes of different speeds, and
a client played step by step whose stale task the server withdraws."""

from __future__ import annotations

import io
import json
import threading

import grpc
import pytest
import torch

from fl.deploy import run_client
from tests.examples.test_deploy import run_clients, start_server
from tests.federation_harness import ManualClient, close_deployment, deploy_config, deployed_server, running_round
from transport.grpc_client import FederationClient

CONFIG = """
name = "deploy-async"
rounds = 20
[data]
num_clients = 3
[sampling]
per_round = 3
[model]
hidden = [16]
[client]
steps = 2
[strategy]
name = "fedasync"
concurrency = 3
max_staleness = 20
"""


def test_three_clients_of_different_speeds_run_fedasync(tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text(CONFIG)
    server, address = start_server(config, tmp_path)

    clients = run_clients(address, ["--delay", "0.05"], ["--delay", "0.2"], ["--delay", "0.5"])

    assert server.wait(timeout=60) == 0, server.stderr.read()
    assert all(c.returncode == 0 for c in clients), [c.stderr for c in clients]
    run = tmp_path / "deploy-async"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["version"] for r in rows] == list(range(2, 22))  # one row per version, every arrival publishes
    assert all(r["clients"] == 1 for r in rows)
    assert max(r["staleness_max"] for r in rows) > 0  # slower clients arrive with stale versions
    counts = json.loads((run / "staleness.json").read_text())
    assert sum(counts.values()) == 20
    tasks = [int(c.stderr.rsplit("after ", 1)[1].split(" tasks")[0]) for c in clients]
    assert tasks[0] > tasks[2]  # the fast client contributes more often
    assert torch.isfinite(torch.load(run / "model.pt")["params"]).all()


def test_a_task_made_too_stale_is_withdrawn_and_its_client_gets_a_new_one(tmp_path):
    # Prepare: FedAsync, both clients in flight, no staleness allowed
    config = deploy_config(tmp_path, 'strategy.name="fedasync"', "strategy.concurrency=2", "strategy.max_staleness=0",
                           "data.num_clients=2", "sampling.per_round=2", 'transport.uplink="identity"', "rounds=2")
    server = deployed_server(config)
    address = server.channel.address
    clients = [ManualClient(address, 0), ManualClient(address, 1)]
    server.wait_for_clients(2, timeout=20)
    with running_round(server, 1) as outcome:
        first, second = clients[0].pull(), clients[1].pull()
        late = clients[1].compute(second)  # client 1 trains on version 1 too
        # Execute: client 0 answers first, which publishes version 2 and makes client 1's task too stale
        clients[0].send(clients[0].compute(first))
    assert outcome["metrics"]["version"] == 2
    with running_round(server, 2) as outcome:
        with pytest.raises(grpc.RpcError) as refused:
            clients[1].send(late)
        retry = clients[1].pull()
        clients[1].send(clients[1].compute(retry))
    # Assert
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (first.task.version, second.task.version, retry.task.version) == (1, 1, 2)
    assert outcome["metrics"]["stale"] == 1 and outcome["metrics"]["staleness_max"] == 0
    close_deployment(server, clients)


def test_a_client_process_carries_on_after_its_task_is_withdrawn(tmp_path):
    # Prepare: client 1 runs the `fl client` loop, waiting 3 s before each task; client 0 is played by hand
    config = deploy_config(tmp_path, 'strategy.name="fedasync"', "strategy.concurrency=2", "strategy.max_staleness=0",
                           "data.num_clients=2", "sampling.per_round=2", 'transport.uplink="identity"', "rounds=2")
    server = deployed_server(config)
    fast = ManualClient(server.channel.address, 0)
    log, done = io.StringIO(), {}
    connection = FederationClient(server.channel.address, client_id=1, timeout_seconds=20)
    slow = threading.Thread(target=lambda: done.update(tasks=run_client(connection, 1, log=log, delay=3.0)))
    slow.start()
    server.wait_for_clients(2, timeout=20)
    # Execute: client 0's answer publishes version 2 while client 1 waits, so client 1's task is withdrawn
    with running_round(server, 1):
        fast.send(fast.compute(fast.pull()))
    with running_round(server, 2) as outcome:
        pass  # client 1 finds its task withdrawn, takes a task of version 2 and answers it
    close_deployment(server, [fast])
    slow.join(timeout=30)
    connection.close()
    # Assert
    assert "withdrew task" in log.getvalue() and done["tasks"] >= 1
    assert outcome["metrics"]["stale"] == 1 and outcome["metrics"]["clients"] == 1
