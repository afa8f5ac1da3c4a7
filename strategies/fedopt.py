"""Server optimizers on the pseudo-gradient: FedAvgM (Hsu et al., 2019, "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification") and FedAdam, FedYogi, FedAdagrad (Reddi et al., 2021, "Adaptive
Federated Optimization").

Each round the pseudo-gradient is -(sample-weighted mean of the client updates) and a torch.optim optimizer steps the
global model on it. The optimizer works on the trainable entries only, in float64 (like `WeightedMean`), and the result
is cast back to the global dtype; buffers (e.g. BatchNorm statistics) take the plain mean update, since an adaptive
step would e.g. drive a running variance negative. With SGD(lr=1, momentum=0) the step is bit for bit
`apply_mean_update(global, mean)`.

Differences from Reddi et al. Algorithm 2 that come from using torch.optim: torch's Adam applies bias correction
(theirs has none) and torch's Adagrad has no first-moment term (their beta1 = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import Parameter
from torch.optim import Optimizer

from strategies.base import (
    Federation,
    Instruction,
    Reply,
    Scalar,
    SyncStrategy,
    WeightedMean,
    apply_mean_update,
    sample_uniform,
)
from strategies.options import in_range, non_negative, positive
from strategies.yogi import Yogi

OptimizerFactory = Callable[[list[Parameter]], Optimizer]


class ServerOptimizer:
    """A torch optimizer over one float64 Parameter that holds the trainable part of the global vector.

    The Parameter is reset to the incoming global vector every round, so the optimizer state (momentum, second moments)
    follows the global model even if the runtime changed it between rounds (the runtime hands each call its own copy).
    """

    def __init__(self, num_trainable: int, make_optimizer: OptimizerFactory) -> None:
        self.param = Parameter(torch.zeros(num_trainable, dtype=torch.float64))
        self.optimizer = make_optimizer([self.param])

    def step(self, global_params: Tensor, mean_update: Tensor) -> Tensor:
        """New global vector: trainable entries stepped on -mean_update, buffers global + mean_update."""
        n = self.param.numel()
        with torch.no_grad():
            self.param.copy_(global_params[:n])
        self.param.grad = -mean_update[:n].to(torch.float64)
        self.optimizer.step()
        new_global = apply_mean_update(global_params, mean_update)
        new_global[:n] = self.param.detach()
        return new_global


class ServerOptStrategy(SyncStrategy):
    """Uniform sampling, sample-weighted mean update, then one server-optimizer step on the pseudo-gradient."""

    def __init__(
        self, federation: Federation, make_optimizer: OptimizerFactory, client_config: dict[str, Scalar] | None = None
    ) -> None:
        self.federation = federation
        self.server = ServerOptimizer(federation.num_trainable, make_optimizer)
        self.client_config = dict(client_config or {})

    def configure(
        self, round: int, global_params: Tensor, available: Sequence[int], rng: np.random.Generator
    ) -> list[Instruction]:
        chosen = sample_uniform(available, self.federation.per_round, rng)
        return [Instruction(cid, dict(self.client_config)) for cid in chosen]

    def aggregate(self, round: int, global_params: Tensor, replies: Iterable[Reply]) -> tuple[Tensor, dict[str, float]]:
        mean = WeightedMean()
        for reply in replies:
            mean.add(reply.update, reply.num_samples)
        return self.server.step(global_params, mean.result()), {}


def check_adaptive(label: str, server_lr: float, betas: tuple[float, ...], eps: float) -> None:
    """The options of an adaptive server optimizer: server_lr and eps (tau) > 0, each beta in [0, 1)."""
    positive(label, "server_lr", server_lr)
    for key, beta in zip(("beta1", "beta2"), betas):
        in_range(label, key, beta, 0.0, 1.0, closed_high=False)
    positive(label, "eps", eps)


@dataclass
class FedAvgMConfig:
    """FedAvgM: server SGD with momentum on the pseudo-gradient (Hsu et al., 2019)."""

    server_lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        positive("fedavgm", "server_lr", self.server_lr)
        in_range("fedavgm", "momentum", self.momentum, 0.0, 1.0, closed_high=False)

    def build(self, federation: Federation) -> ServerOptStrategy:
        return ServerOptStrategy(federation, self.optimizer)

    def optimizer(self, params: list[Parameter]) -> Optimizer:
        return torch.optim.SGD(params, lr=self.server_lr, momentum=self.momentum)


@dataclass
class FedAdamConfig:
    """FedAdam: server Adam on the pseudo-gradient (Reddi et al., 2021; torch Adam, with bias correction)."""

    server_lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3  # tau in Reddi et al.

    def __post_init__(self) -> None:
        check_adaptive("fedadam", self.server_lr, (self.beta1, self.beta2), self.eps)

    def build(self, federation: Federation) -> ServerOptStrategy:
        return ServerOptStrategy(federation, self.optimizer)

    def optimizer(self, params: list[Parameter]) -> Optimizer:
        return torch.optim.Adam(params, lr=self.server_lr, betas=(self.beta1, self.beta2), eps=self.eps)


@dataclass
class FedYogiConfig:
    """FedYogi: server Yogi on the pseudo-gradient (Reddi et al., 2021; no bias correction, v starts at tau^2)."""

    server_lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3  # tau in Reddi et al.
    initial_accumulator: float = 1e-6

    def __post_init__(self) -> None:
        check_adaptive("fedyogi", self.server_lr, (self.beta1, self.beta2), self.eps)
        non_negative("fedyogi", "initial_accumulator", self.initial_accumulator)

    def build(self, federation: Federation) -> ServerOptStrategy:
        return ServerOptStrategy(federation, self.optimizer)

    def optimizer(self, params: list[Parameter]) -> Optimizer:
        return Yogi(params, self.server_lr, (self.beta1, self.beta2), self.eps, self.initial_accumulator)


@dataclass
class FedAdagradConfig:
    """FedAdagrad: server Adagrad on the pseudo-gradient (Reddi et al., 2021)."""

    server_lr: float = 1e-1
    eps: float = 1e-3  # tau in Reddi et al.

    def __post_init__(self) -> None:
        check_adaptive("fedadagrad", self.server_lr, (), self.eps)

    def build(self, federation: Federation) -> ServerOptStrategy:
        return ServerOptStrategy(federation, self.optimizer)

    def optimizer(self, params: list[Parameter]) -> Optimizer:
        return torch.optim.Adagrad(params, lr=self.server_lr, eps=self.eps)
