"""DiLoCo (Douillard et al., 2023, "DiLoCo: Distributed Low-Communication Training of Language Models"): clients run
the inner AdamW optimizer; the server applies outer Nesterov SGD to the pseudo-gradient -(sample-weighted mean update).

The outer step is `fedopt.ServerOptimizer` (float64, cast back to the global dtype). torch refuses Nesterov without
momentum, so outer_momentum = 0 means plain SGD; with outer_lr = 1 as well, the step is FedAvg's bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import Parameter
from torch.optim import Optimizer

from strategies.base import Federation, Scalar
from strategies.fedopt import ServerOptStrategy
from strategies.options import in_range, non_negative, positive, require


@dataclass
class DiLoCoConfig:
    """DiLoCo: inner AdamW on clients, outer Nesterov SGD on the pseudo-gradient (Douillard et al., 2023)."""

    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    inner_weight_decay: float | None = None  # None keeps the client config's weight decay

    def __post_init__(self) -> None:
        positive("diloco", "outer_lr", self.outer_lr)
        in_range("diloco", "outer_momentum", self.outer_momentum, 0.0, 1.0, closed_high=False)
        decay = self.inner_weight_decay
        if decay is not None:
            require("diloco", isinstance(decay, (int, float)) and not isinstance(decay, bool),
                    f"inner_weight_decay must be a number (or absent), got {decay!r}")
            non_negative("diloco", "inner_weight_decay", decay)

    def build(self, federation: Federation) -> ServerOptStrategy:
        client_config: dict[str, Scalar] = {"optimizer": "adamw"}
        if self.inner_weight_decay is not None:
            client_config["weight_decay"] = self.inner_weight_decay
        return ServerOptStrategy(federation, self.optimizer, client_config)

    def optimizer(self, params: list[Parameter]) -> Optimizer:
        nesterov = self.outer_momentum > 0
        return torch.optim.SGD(params, lr=self.outer_lr, momentum=self.outer_momentum, nesterov=nesterov)
