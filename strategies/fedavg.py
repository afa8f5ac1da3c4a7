"""FedAvg: sample-weighted average of client updates (McMahan et al., 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from torch import Tensor

from strategies.base import (
    Federation,
    Instruction,
    Reply,
    SyncStrategy,
    WeightedMean,
    apply_mean_update,
    sample_uniform,
)
from strategies.options import positive


@dataclass
class FedAvgConfig:
    """FedAvg: sample-weighted average of client updates."""

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        positive("fedavg", "server_lr", self.server_lr)

    def build(self, federation: Federation) -> "FedAvg":
        return FedAvg(federation, self)


class FedAvg(SyncStrategy):
    def __init__(self, federation: Federation, config: FedAvgConfig) -> None:
        self.federation = federation
        self.config = config

    def configure(
        self, round: int, global_params: Tensor, available: Sequence[int], rng: np.random.Generator
    ) -> list[Instruction]:
        return [Instruction(cid) for cid in sample_uniform(available, self.federation.per_round, rng)]

    def aggregate(self, round: int, global_params: Tensor, replies: Iterable[Reply]) -> tuple[Tensor, dict[str, float]]:
        mean = WeightedMean()
        for reply in replies:
            mean.add(reply.update, reply.num_samples)
        return apply_mean_update(global_params, mean.result(), self.config.server_lr), {}
