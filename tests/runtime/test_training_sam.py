"""The client hook's perturbation: the trainer takes the gradient at a perturbed point on the same mini-batch (SAM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fl.params import ParamSpec
from fl.training import LocalTrainer, TrainConfig
from strategies.base import ClientHook


class Sharpness(ClientHook):
    def __init__(self, rho: float) -> None:
        self.rho = rho

    def perturbation(self, params: Tensor, grad: Tensor) -> Tensor | None:
        return self.rho * grad / grad.norm() if self.rho else None


def data() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    return nn.Linear(3, 2).double(), torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))


def test_one_step_uses_the_gradient_at_the_perturbed_point() -> None:
    # Prepare: one full-batch SGD step with lr 0.1 and rho 0.05, by hand with autograd
    model, x, y = data()
    spec = ParamSpec.from_module(model)
    start = spec.flatten(model).clone()

    def gradient(flat: Tensor) -> Tensor:
        w = flat.clone().requires_grad_(True)
        weight, bias = w[:6].view(2, 3), w[6:]
        F.cross_entropy(x @ weight.T + bias, y).backward()
        return w.grad

    g = gradient(start)
    expected = -0.1 * gradient(start + 0.05 * g / g.norm())
    # Execute
    config = TrainConfig(steps=1, batch_size=8, lr=0.1, update_dtype="float64")
    outcome = LocalTrainer(model, torch.device("cpu")).train(start, x, y, config, seed=1, hook=Sharpness(0.05))
    # Assert
    assert torch.allclose(outcome.update, expected, rtol=0, atol=1e-15)
    assert not torch.allclose(outcome.update, -0.1 * g, rtol=0, atol=1e-6)  # the perturbation mattered


def test_no_perturbation_changes_nothing() -> None:
    model, x, y = data()
    start = ParamSpec.from_module(model).flatten(model).clone()
    config = TrainConfig(steps=3, batch_size=4, lr=0.1, update_dtype="float64")
    plain = LocalTrainer(model, torch.device("cpu")).train(start, x, y, config, seed=1, hook=ClientHook())
    zero = LocalTrainer(model, torch.device("cpu")).train(start, x, y, config, seed=1, hook=Sharpness(0.0))
    assert torch.equal(plain.update, zero.update)
