"""FedAvg-M (Cheng et al., ICLR 2024): beta = 1 is FedAvg; the server momentum is the mean local direction."""

import numpy as np
import torch

from strategies.base import Federation, Reply
from strategies.registry import strategy_config
from tests.strategies.strategy_driver import federation_for, heterogeneous_quadratic, run_rounds


def test_beta_one_is_fedavg_bit_for_bit() -> None:
    # Prepare
    problem = heterogeneous_quadratic(num_clients=3, dim=2, seed=1)
    fed = federation_for(problem)
    # Execute
    momentum = run_rounds(strategy_config("fedavg_client_momentum", {"beta": 1.0}).build(fed), problem, 5, 4, 0.1)
    fedavg = run_rounds(strategy_config("fedavg", {}).build(fed), problem, 5, 4, 0.1)
    # Assert
    assert torch.equal(momentum, fedavg)


def test_local_direction_mixes_gradient_and_momentum() -> None:
    # Prepare: 0.25 * [4, 8] + 0.75 * [1, -1] = [1.75, 1.25]
    strategy = strategy_config("fedavg_client_momentum", {"beta": 0.25}).build(Federation(2, 2, 2, 2))
    hook = strategy.client_algorithm.start(torch.zeros(2), {"momentum": torch.tensor([1.0, -1.0])}, {})
    grad = torch.tensor([4.0, 8.0])
    # Execute
    hook.on_gradient(torch.zeros(2), grad)
    # Assert
    assert torch.equal(grad, torch.tensor([1.75, 1.25]))


def test_server_momentum_is_the_mean_local_direction() -> None:
    # Prepare: 3 trainable entries + 1 buffer; directions -u / (lr * steps): [-1, 2, 0] and [-3, 0, 2], weights 1 and 3
    strategy = strategy_config("fedavg_client_momentum", {"server_lr": 1.0}).build(Federation(2, 2, 4, 3))
    strategy.configure(0, torch.zeros(4), [0, 1], np.random.default_rng(0))
    replies = [
        Reply(0, torch.tensor([0.2, -0.4, 0.0, 1.0]), 1, {"loss": 0.0, "steps": 2, "lr": 0.1}),
        Reply(1, torch.tensor([1.5, 0.0, -1.0, 5.0]), 3, {"loss": 0.0, "steps": 5, "lr": 0.1}),
    ]
    # Execute
    new, _ = strategy.aggregate(0, torch.zeros(4), replies)
    instructions = strategy.configure(1, new, [0, 1], np.random.default_rng(0))
    # Assert: g = (1 * [-1, 2, 0] + 3 * [-3, 0, 2]) / 4; x = weighted mean update
    assert torch.allclose(instructions[0].tensors["momentum"], torch.tensor([-2.5, 0.5, 1.5]))
    assert torch.allclose(new, torch.tensor([1.175, -0.1, -0.75, 4.0]))


def test_converges_much_closer_than_fedavg_on_the_quadratic() -> None:
    # Prepare: heterogeneous clients, 10 local steps
    problem = heterogeneous_quadratic(num_clients=4, dim=3, seed=0)
    optimum, fed = problem.optimum(), federation_for(problem)
    # Execute
    momentum = run_rounds(strategy_config("fedavg_client_momentum", {"beta": 0.1}).build(fed), problem, 150, 10, 0.05)
    fedavg = run_rounds(strategy_config("fedavg", {}).build(fed), problem, 150, 10, 0.05)
    # Assert: the drift shrinks about with beta
    assert torch.linalg.norm(momentum - optimum) < torch.linalg.norm(fedavg - optimum) / 5
