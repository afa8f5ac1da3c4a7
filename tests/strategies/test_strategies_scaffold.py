"""SCAFFOLD removes client drift on a heterogeneous quadratic, where FedAvg stays biased."""

import numpy as np
import torch

from strategies.base import Federation, Reply
from strategies.registry import strategy_config
from tests.strategies.strategy_driver import federation_for, heterogeneous_quadratic, run_rounds


def test_scaffold_reaches_the_optimum_fedavg_does_not() -> None:
    # Prepare: 4 clients, full participation, 10 local GD steps
    problem = heterogeneous_quadratic(num_clients=4, dim=3, seed=0)
    optimum, fed = problem.optimum(), federation_for(problem)
    # Execute
    scaffold = run_rounds(strategy_config("scaffold", {}).build(fed), problem, rounds=60, steps=10, lr=0.05)
    fedavg = run_rounds(strategy_config("fedavg", {}).build(fed), problem, rounds=60, steps=10, lr=0.05)
    # Assert
    assert torch.linalg.norm(scaffold - optimum) < 1e-6
    assert torch.linalg.norm(fedavg - optimum) > 0.1


def test_client_variate_and_uplink_delta() -> None:
    # Prepare: x = [1, 1], c = [0.5, 0], c_i = [0.25, 0.25], 2 steps at lr 0.5 ending at y = [0, 2]
    strategy = strategy_config("scaffold", {}).build(Federation(2, 2, 2, 2))
    hook = strategy.client_algorithm.start(
        torch.tensor([1.0, 1.0]), {"c": torch.tensor([0.5, 0.0])}, {"c": torch.tensor([0.25, 0.25])}
    )
    grad = torch.zeros(2)
    # Execute
    hook.on_gradient(torch.zeros(2), grad)
    result = hook.on_finish(torch.tensor([0.0, 2.0]), steps=2, lr=0.5)
    # Assert: grad += c - c_i; c_i+ = c_i - c + (x - y) / (K lr) = [0.75, -0.75]
    assert torch.equal(grad, torch.tensor([0.25, -0.25]))
    assert torch.equal(result.state["c"], torch.tensor([0.75, -0.75]))
    assert torch.equal(result.tensors["delta_c"], torch.tensor([0.5, -1.0]))


def test_server_uses_unweighted_means_and_participation_fraction() -> None:
    # Prepare: 4 clients, 2 reply with very different sample counts
    strategy = strategy_config("scaffold", {"server_lr": 1.0}).build(Federation(4, 2, 2, 2))
    strategy.configure(0, torch.zeros(2), [0, 1], np.random.default_rng(0))
    metrics = {"loss": 0.0, "steps": 1, "lr": 0.1}
    replies = [
        Reply(0, torch.tensor([1.0, 0.0]), 1, metrics, {"delta_c": torch.tensor([2.0, 0.0])}),
        Reply(1, torch.tensor([3.0, 2.0]), 99, metrics, {"delta_c": torch.tensor([0.0, 4.0])}),
    ]
    # Execute
    new, _ = strategy.aggregate(0, torch.zeros(2), replies)
    # Assert: x += mean(update) = [2, 1]; c += 2/4 * mean(delta_c) = [0.5, 1]
    assert torch.equal(new, torch.tensor([2.0, 1.0]))
    assert torch.equal(strategy.c, torch.tensor([0.5, 1.0]))
