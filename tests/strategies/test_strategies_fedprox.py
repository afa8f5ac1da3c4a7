"""FedProx: the proximal hook adds mu * (params - global); mu = 0 changes nothing."""

import torch

from strategies.base import Federation
from strategies.fedavg import FedAvg
from strategies.fedprox import ProximalTerm
from strategies.registry import strategy_config


def test_mu_zero_leaves_the_gradient_bit_identical() -> None:
    # Prepare
    gen = torch.Generator().manual_seed(1)
    global_params, params, grad = (torch.randn(100, generator=gen) for _ in range(3))
    before = grad.clone()
    hook = ProximalTerm(0.0).start(global_params, {}, {})
    # Execute
    hook.on_gradient(params, grad)
    # Assert: same bits
    assert torch.equal(grad.view(torch.int32), before.view(torch.int32))


def test_mu_adds_the_proximal_gradient() -> None:
    # Prepare: 0.5 * ([3, 1] - [1, 2]) = [1, -0.5]
    hook = ProximalTerm(0.5).start(torch.tensor([1.0, 2.0]), {}, {})
    grad = torch.tensor([0.25, 0.25])
    # Execute
    hook.on_gradient(torch.tensor([3.0, 1.0]), grad)
    # Assert
    assert torch.equal(grad, torch.tensor([1.25, -0.25]))


def test_hook_anchors_a_copy_of_the_global_parameters() -> None:
    global_params = torch.tensor([1.0])
    hook = ProximalTerm(1.0).start(global_params, {}, {})
    global_params += 5.0
    grad = torch.zeros(1)
    hook.on_gradient(torch.tensor([2.0]), grad)
    assert grad.item() == 1.0


def test_config_builds_fedavg_with_the_hook() -> None:
    strategy = strategy_config("fedprox", {"mu": 0.2}).build(Federation(3, 3, 2, 2))
    assert isinstance(strategy, FedAvg)
    assert isinstance(strategy.client_algorithm, ProximalTerm) and strategy.client_algorithm.mu == 0.2
