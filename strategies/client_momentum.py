"""FedAvg with client momentum, "FedAvg-M" of Cheng, Huang, Wu and Yuan, "Momentum Benefits Non-IID Federated Learning
Simply and Provably" (ICLR 2024, arXiv:2306.16504), Algorithm 1; the same scheme as FedCM (Xu et al., 2021).

The server keeps a momentum direction g (trainable entries, 0 at the start) and sends it to the sampled clients.
Every local step of client i moves along d = beta * grad + (1 - beta) * g, so with plain local SGD at lr eta_i for K_i
steps the mean local direction is -update_i / (eta_i * K_i). The server then sets
    g+ = sample-weighted mean over clients of -update_i / (eta_i * K_i)   (read from metrics "lr" and "steps")
    x+ = x + server_lr * (sample-weighted mean of update_i).
With equal eta and K the model step is the paper's x+ = x - gamma * g+ with gamma = server_lr * eta * K; it is kept in
FedAvg form so that beta = 1 is FedAvg bit for bit. A reply with zero steps adds nothing to g+.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from strategies.base import (
    ClientAlgorithm,
    ClientHook,
    Federation,
    Instruction,
    Reply,
    SyncStrategy,
    WeightedMean,
    apply_mean_update,
    sample_uniform,
)
from strategies.options import in_range, positive


class MomentumStepHook(ClientHook):
    def __init__(self, momentum: Tensor, beta: float) -> None:
        self.momentum = momentum
        self.beta = beta

    def on_gradient(self, params: Tensor, grad: Tensor) -> None:
        grad.mul_(self.beta).add_(self.momentum, alpha=1 - self.beta)


class MomentumStep(ClientAlgorithm):
    """Mixes each local gradient with the server's momentum direction `tensors["momentum"]`."""

    def __init__(self, beta: float) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        self.beta = beta

    def start(self, global_params: Tensor, tensors: dict[str, Tensor], state: dict[str, Tensor]) -> ClientHook:
        return MomentumStepHook(tensors["momentum"], self.beta)


@dataclass
class ClientMomentumConfig:
    """FedAvg-M: local steps mix the gradient with a server momentum direction (Cheng et al., ICLR 2024)."""

    beta: float = 0.1  # weight of the fresh local gradient; 1 gives FedAvg
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        in_range("fedavg_client_momentum", "beta", self.beta, 0.0, 1.0)
        positive("fedavg_client_momentum", "server_lr", self.server_lr)

    def build(self, federation: Federation) -> "ClientMomentum":
        return ClientMomentum(federation, self)


class ClientMomentum(SyncStrategy):
    def __init__(self, federation: Federation, config: ClientMomentumConfig) -> None:
        self.federation = federation
        self.config = config
        self.client_algorithm = MomentumStep(config.beta)
        self.momentum: Tensor | None = None

    def configure(
        self, round: int, global_params: Tensor, available: Sequence[int], rng: np.random.Generator
    ) -> list[Instruction]:
        if self.momentum is None:
            self.momentum = torch.zeros(self.federation.num_trainable, dtype=global_params.dtype)
        chosen = sample_uniform(available, self.federation.per_round, rng)
        return [Instruction(cid, tensors={"momentum": self.momentum}) for cid in chosen]

    def aggregate(self, round: int, global_params: Tensor, replies: Iterable[Reply]) -> tuple[Tensor, dict[str, float]]:
        n = self.federation.num_trainable
        update, direction = WeightedMean(), WeightedMean()
        for reply in replies:
            update.add(reply.update, reply.num_samples)
            scale = reply.metrics["lr"] * reply.metrics["steps"]
            if scale > 0:
                direction.add(reply.update[:n].to(torch.float64) / -scale, reply.num_samples)
        if direction.count > 0:
            self.momentum = direction.result().to(global_params.dtype)
        return apply_mean_update(global_params, update.result(), self.config.server_lr), {}
