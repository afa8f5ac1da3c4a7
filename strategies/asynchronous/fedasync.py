"""FedAsync (Xie, Koyejo, Gupta, 2019, "Asynchronous Federated Optimization", arXiv 1903.03934).

Every arrival is mixed into the global model at once and published:

    alpha_t = alpha * s(staleness),    x <- (1 - alpha_t) * x + alpha_t * y,    y = start_params + update

This is the paper's mixing form with its adaptive alpha (the same rule as FLSim's `fed_async_aggregation` with server
SGD without momentum; the staleness functions are the paper's and APPFL's). APPFL's variants, which divide alpha by
the number of clients or add alpha_t * update (the delta form) instead of mixing with the client's model, are not
used: mixing is what the paper analyses, and with alpha_t = 1 it returns the client's model exactly. The mixing
covers the whole vector, buffers such as BatchNorm statistics included. With rho > 0 each client adds the proximal
gradient rho * (y - x_start) to its local steps (the paper's regularised local objective; `ProximalTerm`).

Defaults: alpha = 0.9 (APPFL, Plato) and s(tau) = (1 + tau)^-0.5 (APPFL's example configuration); the strategy keeps
no per-client state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from strategies.asynchronous.base import Arrival, AsyncStrategy, check_concurrency
from strategies.asynchronous.staleness import parse_staleness, staleness_limit
from strategies.base import Federation
from strategies.fedprox import ProximalTerm
from strategies.options import concurrency


@dataclass
class FedAsyncConfig:
    """FedAsync: mix each arriving client model into the global one with weight alpha * s(staleness) (Xie et al.)."""

    concurrency: int = 10  # clients in flight at once; 0: every client
    alpha: float = 0.9  # mixing weight, in (0, 1]
    staleness: str = "polynomial:a=0.5"  # s(tau): constant, polynomial:a=A or hinge:a=A,b=B
    rho: float = 0.0  # proximal weight of the local objective; 0: plain local training
    max_staleness: int = -1  # the runtime drops arrivals staler than this; -1: no limit

    def __post_init__(self) -> None:
        concurrency("fedasync", self.concurrency)
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"fedasync: alpha must be in (0, 1], got {self.alpha}")
        if not self.rho >= 0.0:
            raise ValueError(f"fedasync: rho must be >= 0, got {self.rho}")
        parse_staleness(self.staleness)
        staleness_limit(self.max_staleness)

    def build(self, federation: Federation) -> FedAsync:
        return FedAsync(federation, self)


class FedAsync(AsyncStrategy):
    def __init__(self, federation: Federation, config: FedAsyncConfig) -> None:
        self.config = config
        self.weight = parse_staleness(config.staleness)
        self.concurrency = check_concurrency(config.concurrency, federation.num_clients)
        self.max_staleness = staleness_limit(config.max_staleness)
        if config.rho > 0:
            self.client_algorithm = ProximalTerm(config.rho)

    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> Tensor:
        """(1 - alpha_t) x + alpha_t y in float64, cast back to the global dtype; alpha_t = 1 gives y exactly."""
        alpha_t = self.config.alpha * self.weight(arrival.staleness)
        client_model = arrival.start_params.to(torch.float64) + arrival.update.to(torch.float64)
        mixed = (1.0 - alpha_t) * global_params.to(torch.float64) + alpha_t * client_model
        return mixed.to(global_params.dtype)
