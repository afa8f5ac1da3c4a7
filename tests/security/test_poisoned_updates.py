"""Poisoned and diverging updates: the norm bound at admission, a client's own divergence reported as a failed task,
and a run that stops once its global model keeps making clients diverge."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
import torch

from fl.bounds import divergence, update_bound
from fl.errors import Diverged
from fl.pool import LocalPool
from fl.scenario import build_data, build_model_fn
from fl.server import Server
from fl.simulation import server_setup
from fl.worker import Worker
from tests.federation_harness import (
    ManualClient, close_deployment, deploy_config, deployed_server, play_round, running_round,
)
from tests.grpc_helpers import refusal
from tests.security.test_security_boundary import VALUE_LIES
from transport.codecs.cast import IdentityCodec
from transport.inprocess import InProcessChannel
from transport.messages import DIVERGED, REFUSED, TRAIN, Result, Task

Code = grpc.StatusCode
POISON = 1e38


def poisoned(result: Result) -> Result:
    """The result with every value of its update 1e38: finite, so only the norm bound stops it."""
    values = torch.full(result.update.shape, POISON, dtype=result.update.dtype)
    return dataclasses.replace(result, update=IdentityCodec().encode(values, {})[0])


def diverged(result: Result) -> Result:
    """What an honest client whose training diverged sends instead of `result`."""
    return Result(DIVERGED, result.version, result.client_id, result.num_samples, {})


@pytest.fixture
def fedavg_deployment(tmp_path):
    """A deployed FedAvg server (identity uplink, so a test can forge update values) with three joined clients."""
    config = deploy_config(tmp_path, 'strategy.name="fedavg"', 'transport.uplink="identity"')
    server = deployed_server(config)
    clients = [ManualClient(server.channel.address, i) for i in range(3)]
    yield server, clients
    close_deployment(server, clients)


def test_the_bound_is_relative_to_the_model_and_at_least_the_ratio_itself() -> None:
    assert update_bound(100.0, 0.0) == 100.0 and update_bound(100.0, 5.0) == 500.0
    assert update_bound(0.0, 5.0) == float("inf")  # off
    start = torch.full((4,), 2.0)  # norm 4
    assert divergence(0.5, torch.full((4,), 199.0), start, 100.0) is None  # norm 398 <= 400
    assert "max_update_norm" in divergence(0.5, torch.full((4,), 201.0), start, 100.0)
    assert divergence(float("nan"), torch.zeros(4), start, 100.0) == "loss nan"
    assert "NaN or Inf" in divergence(0.5, torch.tensor([1.0, float("inf"), 0.0, 0.0]), start, 0.0)


def test_a_1e38_update_is_refused_its_task_fails_and_the_round_goes_on_with_the_honest_clients(fedavg_deployment):
    # Prepare: client 0 is the attacker; every client pulls its task of round 1
    server, clients = fedavg_deployment
    with running_round(server, 1) as outcome:
        assignments = [client.pull() for client in clients]
        honest = [client.compute(a) for client, a in zip(clients, assignments)]
        # Execute: the poisoned update, then the attacker's honest one for the same task
        error = refusal(clients[0].connection.push_result, assignments[0].task_id, poisoned(honest[0]))
        retry = refusal(clients[0].connection.push_result, assignments[0].task_id, honest[0])
        for client, result in zip(clients[1:], honest[1:]):
            client.send(result)
    # Assert: refused with the reason, answered as failed once, aggregated without it
    assert error.code() == Code.INVALID_ARGUMENT and "security.max_update_norm" in error.details()
    assert retry.code() == Code.FAILED_PRECONDITION and "already answered" in retry.details()
    metrics = outcome["metrics"]
    assert (metrics["clients"], metrics["refused"], metrics["diverged"]) == (2, 1, 0)
    assert torch.isfinite(server.global_params).all()
    assert server.global_params.abs().max() < 10  # nothing of 1e38 got in
    play_round(server, 2, clients)  # the attacker's client id may still take part honestly


def test_a_client_whose_training_diverged_reports_it_and_the_round_counts_it(fedavg_deployment):
    server, clients = fedavg_deployment
    with running_round(server, 1) as outcome:
        results = [client.compute(client.pull()) for client in clients]
        clients[0].send(diverged(results[0]))
        for client, result in zip(clients[1:], results[1:]):
            client.send(result)
    metrics = outcome["metrics"]
    assert (metrics["clients"], metrics["diverged"], metrics["refused"]) == (2, 1, 0)
    assert torch.isfinite(server.global_params).all()


def test_a_global_model_that_keeps_making_clients_diverge_stops_the_run_naming_who_made_it(fedavg_deployment):
    # Prepare: an honest round 1, made by the updates of clients 0, 1 and 2
    server, clients = fedavg_deployment
    play_round(server, 1, clients)
    # Execute: in round 2, two of the three clients diverge
    with pytest.raises(Diverged) as stopped:
        with running_round(server, 2):
            results = [client.compute(client.pull()) for client in clients]
            clients[0].send(results[0])
            clients[1].send(diverged(results[1]))
            clients[2].send(diverged(results[2]))
    # Assert: one line naming the round, the diverged clients and the clients whose updates made the model
    message = str(stopped.value)
    assert "\n" not in message
    assert message.startswith("round 2: the training of 2 of 3 clients (1, 2) diverged")
    assert "updates of clients 0, 1, 2 made" in message and "client.lr" in message


def test_a_diverged_report_carries_nothing_else(fedavg_deployment):
    server, clients = fedavg_deployment
    with running_round(server, 1):
        assignments = [client.pull() for client in clients]
        results = [client.compute(a) for client, a in zip(clients, assignments)]
        padded = dataclasses.replace(diverged(results[0]), metrics={"loss": 1.0})
        error = refusal(clients[0].connection.push_result, assignments[0].task_id, padded)
        for client, result in zip(clients, results):
            client.send(result)
    assert error.code() == Code.INVALID_ARGUMENT and "diverged report carries no" in error.details()


def test_a_diverging_worker_reports_its_task_as_diverged_and_keeps_its_state(tmp_path) -> None:
    config = deploy_config(tmp_path, 'runtime.backend="local"', 'transport.channel="direct"', "client.lr=1e4")
    data = build_data(config.data, config.seed)
    server = Server(server_setup(config, data, build_model_fn(config.model, data)), InProcessChannel,
                    lambda setup, endpoint: LocalPool(Worker(setup, endpoint)))
    task = Task(TRAIN, server._publish(), 0, seed=1, tensors={"c": torch.zeros(server.spec.num_trainable)})
    result = server.channel.receive(server.pool.worker.run(server.channel.post(task)))
    assert (result.kind, result.update, result.state, result.metrics) == (DIVERGED, None, {}, {})


def test_values_refused_on_the_direct_channel_fail_the_task_without_touching_the_server(tmp_path) -> None:
    config = deploy_config(tmp_path, 'runtime.backend="local"', 'transport.channel="direct"', 'strategy.name="fedavg"',
                           'transport.uplink="identity"')
    data = build_data(config.data, config.seed)
    server = Server(server_setup(config, data, build_model_fn(config.model, data)), InProcessChannel,
                    lambda setup, endpoint: LocalPool(Worker(setup, endpoint)))
    receipt = server.pool.worker.run(server.channel.post(Task(TRAIN, server._publish(), 0, seed=1)))
    refused = server.channel.receive(poisoned(receipt))
    assert (refused.kind, refused.update, refused.client_id) == (REFUSED, None, 0)
    assert not server.decoder.staged


@pytest.mark.parametrize("lie", VALUE_LIES)
def test_each_lie_in_the_values_fails_its_task_and_the_round_goes_on(tmp_path, lie):
    # Prepare: SCAFFOLD (its delta_c tensor can lie too); client 0 lies, the others are honest
    server = deployed_server(deploy_config(tmp_path))
    clients = [ManualClient(server.channel.address, i) for i in range(3)]
    with running_round(server, 1) as outcome:
        assignments = [client.pull() for client in clients]
        honest = [client.compute(a) for client, a in zip(clients, assignments)]
        bad = dataclasses.replace(honest[0], state={}, **VALUE_LIES[lie](honest[0]))
        # Execute
        error = refusal(clients[0].connection.push_result, assignments[0].task_id, bad)
        for client, result in zip(clients[1:], honest[1:]):
            client.send(result)
    # Assert
    assert error.code() == Code.INVALID_ARGUMENT and "NaN or Inf" in error.details()
    assert (outcome["metrics"]["clients"], outcome["metrics"]["refused"]) == (2, 1)
    assert torch.isfinite(server.global_params).all()
    close_deployment(server, clients)
