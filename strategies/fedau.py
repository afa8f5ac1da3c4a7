"""FedAU (Wang and Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in Federated Averaging",
ICLR 2024, arXiv:2306.03401), following the authors' code (github.com/IBM/fedau, weighting "adaptive").

Each client's aggregation weight omega_n estimates 1 / (its participation probability) online: the mean length of the
intervals between its participations, where an interval is cut off and recorded as K once it reaches K rounds. A client
with no recorded interval yet has omega_n = 1; the interval that ends with a participation counts from the next round
on. The global update is x <- x + server_lr * (1/N) * sum_{n in S} omega_n * update_n with N the total number of
clients, so with full participation every round (omega_n = 1) it is the plain unweighted mean.

Participation means "a reply reached aggregate" this round; who is available at all is decided by the runtime, from
per-client probabilities the strategy does not know, and `configure` samples `per_round` of them uniformly.
Client ids must be 0..num_clients-1.
"""

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
from strategies.options import positive, require


class ParticipationIntervals:
    """Per-client running mean of (cut-off) participation intervals, in numpy arrays of length num_clients."""

    def __init__(self, num_clients: int, cutoff: int) -> None:
        if cutoff < 1:
            raise ValueError(f"cutoff must be >= 1, got {cutoff}")
        self.cutoff = cutoff
        self.open_interval = np.zeros(num_clients, dtype=np.int64)  # rounds since the last recorded interval ended
        self.interval_sum = np.zeros(num_clients, dtype=np.int64)
        self.interval_count = np.zeros(num_clients, dtype=np.int64)

    def weights(self) -> np.ndarray:
        """omega_n for every client: the mean recorded interval, or 1 before any is recorded."""
        recorded = self.interval_count > 0
        return np.where(recorded, self.interval_sum / np.maximum(self.interval_count, 1), 1.0)

    def observe(self, participated: np.ndarray) -> None:
        """Close one round; `participated` is a boolean mask over clients."""
        self.open_interval += 1
        ended = participated | (self.open_interval >= self.cutoff)
        self.interval_sum[ended] += self.open_interval[ended]
        self.interval_count[ended] += 1
        self.open_interval[ended] = 0


@dataclass
class FedAUConfig:
    """FedAU: weight each update by its client's estimated mean participation interval (Wang and Ji, ICLR 2024)."""

    server_lr: float = 1.0
    cutoff: int = 50  # K; the authors run K = 50 and K -> infinity

    def __post_init__(self) -> None:
        positive("fedau", "server_lr", self.server_lr)
        require("fedau", self.cutoff >= 1, f"cutoff must be >= 1, got {self.cutoff}")

    def build(self, federation: Federation) -> "FedAU":
        return FedAU(federation, self)


class FedAU(SyncStrategy):
    def __init__(self, federation: Federation, config: FedAUConfig) -> None:
        self.federation = federation
        self.config = config
        self.intervals = ParticipationIntervals(federation.num_clients, config.cutoff)

    def configure(
        self, round: int, global_params: Tensor, available: Sequence[int], rng: np.random.Generator
    ) -> list[Instruction]:
        return [Instruction(cid) for cid in sample_uniform(available, self.federation.per_round, rng)]

    def aggregate(self, round: int, global_params: Tensor, replies: Iterable[Reply]) -> tuple[Tensor, dict[str, float]]:
        omega = self.intervals.weights()
        participated = np.zeros(self.federation.num_clients, dtype=bool)
        mean = WeightedMean()  # omega-weighted mean; times sum(omega) / N it is the FedAU sum
        for reply in replies:
            mean.add(reply.update, float(omega[reply.client_id]))
            participated[reply.client_id] = True
        self.intervals.observe(participated)
        if mean.count == 0:  # nobody took part: the model stays, the intervals still grow
            return global_params.clone(), {}
        scale = self.config.server_lr * (mean.total_weight / self.federation.num_clients)
        return apply_mean_update(global_params, mean.result(), scale), {"mean_omega": float(omega[participated].mean())}
