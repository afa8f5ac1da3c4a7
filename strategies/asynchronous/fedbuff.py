"""FedBuff (Nguyen et al., 2022, "Federated Learning with Buffered Asynchronous Aggregation", AISTATS).

Each arrival adds w * update to a buffer, w = example weight * s(staleness); after `buffer_size` (K) arrivals a server
optimizer steps the global model on the pseudo-gradient -buffer and a version is published:

    normalize = "count":    buffer = sum_k w_k update_k / K             (the default: the mean over the K arrivals)
    normalize = "weights":  buffer = sum_k w_k update_k / sum_k w_k     (a weighted mean, as FedAvg)
    normalize = "sum":      buffer = sum_k w_k update_k                 (FLSim's WEIGHTED_SUM reducer)

The default divides by K, as we read the paper's Algorithm 1 (the buffer is averaged before the server step; we could
not reach the paper's algorithm box to confirm it, so this is marked as our reading). It keeps the staleness damping
absolute (a stale buffer moves the model less) and makes the step size independent of K, so server lr 1 is a sane
default. FLSim (facebookresearch/FLSim, by the paper's group: `flsim/optimizers/async_aggregators.py`,
`flsim/reducers/base_round_reducer.py`) divides neither by K nor by the sum of the weights ("sum", with its small
default server lr 0.001), with the staleness scaling s(tau) = 1/sqrt(1 + tau) taken raw here (FLSim divides it by its
value at `avg_staleness`, 1 by default). "weights" exists so that with sample weights, constant staleness, server lr
1 and no momentum FedBuff is FedAvg on the buffer, bit for bit. The buffer is a float64 `WeightedMean`; the step is `fedopt.ServerOptimizer` with
SGD(server_lr, momentum), as FLSim's server optimizer. Non-trainable entries (e.g. BatchNorm statistics) always take
the weighted mean of their deltas, without server lr: a sum of K running-variance deltas could make a variance
negative. FLSim flushes a partial buffer at the end of an epoch; the contract has no end of run, so a partial buffer
is never published. No per-client state is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import Parameter
from torch.optim import Optimizer

from strategies.asynchronous.base import Arrival, AsyncStrategy, check_concurrency
from strategies.asynchronous.staleness import parse_staleness, staleness_limit
from strategies.base import Federation, WeightedMean
from strategies.fedopt import ServerOptimizer
from strategies.options import concurrency, positive

EXAMPLE_WEIGHTS = ("equal", "samples")
NORMALIZATIONS = ("count", "weights", "sum")


@dataclass
class FedBuffConfig:
    """FedBuff: buffer K staleness-weighted client updates, then take one server-optimizer step (Nguyen et al.)."""

    concurrency: int = 10  # clients in flight at once; 0: every client
    buffer_size: int = 10  # K, arrivals per published version
    staleness: str = "polynomial:a=0.5"  # s(tau): constant, polynomial:a=A or hinge:a=A,b=B
    weights: str = "equal"  # example weight: "equal" (1 per update) or "samples" (num_samples)
    normalize: str = "count"  # divide the weighted sum by: "count" (K), "weights" (their sum), or "sum" (nothing)
    server_lr: float = 1.0
    momentum: float = 0.0  # server SGD momentum
    max_staleness: int = -1  # the runtime drops arrivals staler than this; -1: no limit

    def __post_init__(self) -> None:
        concurrency("fedbuff", self.concurrency)
        if self.buffer_size < 1:
            raise ValueError(f"fedbuff: buffer_size must be >= 1, got {self.buffer_size}")
        if self.weights not in EXAMPLE_WEIGHTS:
            raise ValueError(f"fedbuff: weights must be one of {', '.join(EXAMPLE_WEIGHTS)}, got {self.weights!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"fedbuff: normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        positive("fedbuff", "server_lr", self.server_lr)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"fedbuff: momentum must be in [0, 1), got {self.momentum}")
        parse_staleness(self.staleness)
        staleness_limit(self.max_staleness)

    def build(self, federation: Federation) -> FedBuff:
        return FedBuff(federation, self)

    def optimizer(self, params: list[Parameter]) -> Optimizer:
        return torch.optim.SGD(params, lr=self.server_lr, momentum=self.momentum)


class FedBuff(AsyncStrategy):
    def __init__(self, federation: Federation, config: FedBuffConfig) -> None:
        self.config = config
        self.weight = parse_staleness(config.staleness)
        self.concurrency = check_concurrency(config.concurrency, federation.num_clients)
        self.max_staleness = staleness_limit(config.max_staleness)
        self.num_trainable = federation.num_trainable
        self.server = ServerOptimizer(federation.num_trainable, config.optimizer)
        self.buffer = WeightedMean()

    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> Tensor | None:
        """Add the weighted update; after K arrivals step on the buffer, empty it and return the new version."""
        example_weight = 1.0 if self.config.weights == "equal" else float(arrival.num_samples)
        self.buffer.add(arrival.update, example_weight * self.weight(arrival.staleness))
        if self.buffer.count < self.config.buffer_size:
            return None
        buffer, self.buffer = self.buffer, WeightedMean()
        mean = buffer.result()
        if buffer.total_weight == 0:  # every weight was 0 (e.g. clients without samples): nothing to add
            mean = torch.zeros_like(mean)
        scale = {"count": buffer.total_weight / buffer.count, "weights": 1.0, "sum": buffer.total_weight}
        step = mean * scale[self.config.normalize]
        step[self.num_trainable :] = mean[self.num_trainable :]
        return self.server.step(global_params, step)
