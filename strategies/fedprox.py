"""FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks"): FedAvg aggregation, and each client
minimises f_i(w) + mu/2 * ||w - w_global||^2, i.e. adds mu * (w - w_global) to every local gradient."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from strategies.base import ClientAlgorithm, ClientHook, Federation
from strategies.fedavg import FedAvg, FedAvgConfig
from strategies.options import non_negative, positive


class ProximalHook(ClientHook):
    def __init__(self, global_params: Tensor, mu: float) -> None:
        self.global_params = global_params
        self.mu = mu

    def on_gradient(self, params: Tensor, grad: Tensor) -> None:
        # With mu = 0 this adds exact zeros (a -0.0 entry of grad may come back as +0.0, which compares equal).
        grad.add_(params - self.global_params, alpha=self.mu)


class ProximalTerm(ClientAlgorithm):
    """Makes a `ProximalHook` anchored at the global parameters the client starts from."""

    def __init__(self, mu: float) -> None:
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = mu

    def start(self, global_params: Tensor, tensors: dict[str, Tensor], state: dict[str, Tensor]) -> ClientHook:
        return ProximalHook(global_params.detach().clone(), self.mu)


@dataclass
class FedProxConfig:
    """FedProx: FedAvg with a proximal term mu/2 ||w - w_global||^2 on each client (Li et al., 2020)."""

    mu: float = 0.01
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        non_negative("fedprox", "mu", self.mu)
        positive("fedprox", "server_lr", self.server_lr)

    def build(self, federation: Federation) -> FedAvg:
        strategy = FedAvg(federation, FedAvgConfig(server_lr=self.server_lr))
        strategy.client_algorithm = ProximalTerm(self.mu)
        return strategy
