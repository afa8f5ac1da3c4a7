"""AFA-CD and AFA-CS (Yang, Zhang, Khanduri, Liu, ICML 2022, "Anarchic Federated Learning", arXiv 2108.09875).

In anarchic FL each worker chooses when it participates and how many local steps K it runs. Here `select` plays the
workers: every idle client participates, after an idle wait drawn from an exponential of mean `idle_mean` (0: at once)
and with K drawn uniformly from [steps_min, steps_max]; the draws come from the generator the runtime hands to select,
which the loop derives from the run seed and its count of slot fills, so runs are reproducible. The server
normalises each update by the steps the client ran, u_i = update_i / K_i (for plain SGD this is -eta_L times the mean
of the K stochastic gradients), and every m (`buffer_size`) arrivals takes one step with the two-sided learning rates:

    AFA-CD:  x <- x + eta * (1/m) sum of the m u_i received              (whatever their delays or senders)
    AFA-CS:  x <- x + eta * (1/M) sum_j u_j, with u_j the latest u of client j (0 for clients never heard from)

AFA-CS keeps the latest normalised update of every client (M vectors in float64): the algorithm needs this memory.
Neither weights staleness (the paper bounds delays instead). The rule follows the project's spec (section A.5), which
marks it reconstructed from memory of the paper: no public code was found, and only the paper's abstract (names,
two-sided learning rates, free participation times and step counts) and a third-party summary (AFA-CS uses the
workers' historical information) could be read; the exact formulas above are not confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from strategies.asynchronous.base import Arrival, AsyncStrategy, Start, check_concurrency, sample_idle
from strategies.base import Federation, WeightedMean, apply_mean_update
from strategies.options import concurrency, positive


@dataclass
class AnarchicOptions:
    """The options that AFA-CD and AFA-CS share."""

    label: ClassVar[str] = "afa"  # the strategy's name in error messages
    concurrency: int = 0  # clients in flight (or waiting to begin) at once; 0: every client may participate
    buffer_size: int = 10  # m, arrivals per server step
    server_lr: float = 1.0  # eta
    steps_min: int = 1  # each participation draws its local steps K uniformly from [steps_min, steps_max]
    steps_max: int = 10
    idle_mean: float = 0.0  # mean virtual seconds an idle client waits before it participates; 0: at once

    def __post_init__(self) -> None:
        name = self.label
        concurrency(name, self.concurrency)
        if self.buffer_size < 1:
            raise ValueError(f"{name}: buffer_size must be >= 1, got {self.buffer_size}")
        positive(name, "server_lr", self.server_lr)
        if not 1 <= self.steps_min <= self.steps_max:
            raise ValueError(f"{name}: need 1 <= steps_min <= steps_max, got {self.steps_min} and {self.steps_max}")
        if not 0.0 <= self.idle_mean < float("inf"):
            raise ValueError(f"{name}: idle_mean must be a number of seconds >= 0, got {self.idle_mean}")


@dataclass
class AFACDConfig(AnarchicOptions):
    """AFA-CD: anarchic clients; every m arrivals step on the mean of their step-normalised updates (Yang et al.)."""

    label: ClassVar[str] = "afa_cd"

    def build(self, federation: Federation) -> AFACD:
        return AFACD(federation, self)


@dataclass
class AFACSConfig(AnarchicOptions):
    """AFA-CS: anarchic clients; every m arrivals step on the mean of every client's latest normalised update."""

    label: ClassVar[str] = "afa_cs"

    def build(self, federation: Federation) -> AFACS:
        return AFACS(federation, self)


def anarchic_starts(options: AnarchicOptions, idle: np.ndarray, slots: int, rng: np.random.Generator) -> list[Start]:
    """Every idle client (up to `slots`, drawn uniformly) participates with its own K and idle wait."""
    starts = []
    for client in sample_idle(idle, slots, rng):
        steps = int(rng.integers(options.steps_min, options.steps_max + 1))
        delay = float(rng.exponential(options.idle_mean)) if options.idle_mean > 0 else 0.0
        starts.append(Start(client, {"steps": steps}, delay))
    return starts


def normalised_update(arrival: Arrival) -> Tensor:
    """update / K in float64, K the steps the client reports (at least 1)."""
    return arrival.update.to(torch.float64) / max(float(arrival.metrics["steps"]), 1.0)


class AFACD(AsyncStrategy):
    def __init__(self, federation: Federation, config: AFACDConfig) -> None:
        self.config = config
        self.concurrency = check_concurrency(config.concurrency, federation.num_clients)
        self.buffer = WeightedMean()

    def select(self, now: float, idle: np.ndarray, slots: int, rng: np.random.Generator) -> list[Start]:
        return anarchic_starts(self.config, idle, slots, rng)

    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> Tensor | None:
        """Buffer u_i; at the m-th arrival publish x + eta * mean(u) and empty the buffer."""
        self.buffer.add(normalised_update(arrival))
        if self.buffer.count < self.config.buffer_size:
            return None
        buffer, self.buffer = self.buffer, WeightedMean()
        return apply_mean_update(global_params, buffer.result(), self.config.server_lr)


class AFACS(AsyncStrategy):
    def __init__(self, federation: Federation, config: AFACSConfig) -> None:
        self.config = config
        self.concurrency = check_concurrency(config.concurrency, federation.num_clients)
        self.num_clients = federation.num_clients
        self.latest: dict[int, Tensor] = {}  # client -> its latest normalised update
        self.arrivals = 0

    def select(self, now: float, idle: np.ndarray, slots: int, rng: np.random.Generator) -> list[Start]:
        return anarchic_starts(self.config, idle, slots, rng)

    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> Tensor | None:
        """Store u_i over the client's previous one; every m arrivals publish x + eta * (1/M) sum_j u_j."""
        self.latest[arrival.client_id] = normalised_update(arrival)
        self.arrivals += 1
        if self.arrivals % self.config.buffer_size:
            return None
        total = torch.zeros_like(self.latest[arrival.client_id])
        for client in sorted(self.latest):
            total += self.latest[client]
        return apply_mean_update(global_params, total / self.num_clients, self.config.server_lr)
