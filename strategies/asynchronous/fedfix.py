"""FedFix and weighted asynchronous FedAvg (Fraboni, Vidal, Kameni, Lorenzi, 2023, "A General Theory for Federated
Optimization with Asynchronous and Heterogeneous Clients Updates", JMLR 24(110)).

Both are instances of the paper's rule x <- x + server_lr * sum_i d_i * update_i, where update_i is the client's
delayed update; d_i removes the bias toward fast clients. The weights follow the paper's code
(Accenture/Labs-Federated-Learning, branch asynchronous_FL, FL/server.py), with p_i the client's importance.

FedFix-dt: every `interval` (dt) virtual seconds the server aggregates whoever arrived since the previous tick; a
client that arrived waits for that tick and restarts on the new model, so clients start only at ticks. As the
paper's code does (`agg_weights = ceil(tau_i / delta_t) * P`; `aggregation` adds lr_g * d_i * (received - sent)), a
tick publishes x + server_lr * sum_i d_i update_i with d_i = ceil(tau_i / dt) * p_i and p_i = n_i / sum_j n_j over
all M clients (n_i: the client's training samples, `Federation.train_sizes`; weights "equal": p_i = 1 / M), not
divided by the tick's sum of d_i. So a client weighs p_i per tick on average, whether it arrives at every tick or
once in ceil(tau_i / dt), and the fixed point is the p-weighted optimum; dividing by the tick's weights would give a
fast client that arrives alone weight 1 and bring the bias back. Deviations from the paper's code: ceil(tau_i / dt)
is counted as the ticks from the client's start (always a tick) to the tick that aggregates it, at least 1 (also
for tau_i = 0), which is exact where k * dt rounds; non-trainable entries (BatchNorm statistics; the paper's models
have none) take the d-weighted mean of their deltas, without server_lr, as in FedBuff, since a sum could make a
variance negative. With dt longer than the slowest task, every client, sample weights and server_lr 1, the weights
of a tick sum to 1 and it is FedAvg's aggregation bit for bit. With `concurrency` C below M (the paper has every
client work), a tick holds about C / M of the weight, and server_lr M / C restores the step. A tick at which nothing
arrived publishes nothing.

Async FedAvg: every arrival is applied at once, d_i = (sum_j 1/tau_j) * tau_i * p_i with p_i = 1/M (the paper's
uniform importance; sample counts are not used), or d_i = 1 without correction ("identical"). tau_j is the mean
observed duration of client j's tasks; clients not yet seen are taken to run at the mean observed rate, so
d_i = tau_i * mean_{j seen}(1/tau_j), which is the paper's weight once every client has been seen. Durations below
1e-9 s count as 1e-9 s (instantaneous clients then all weigh 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strategies.asynchronous.base import Arrival, AsyncStrategy, Start, check_concurrency, sample_idle
from strategies.base import Federation, WeightedMean, apply_mean_update
from strategies.options import concurrency, positive

SAMPLE_WEIGHTS = ("samples", "equal")
MIN_SECONDS = 1e-9


@dataclass
class FedFixConfig:
    """FedFix: aggregate every interval whoever arrived, weighted by ceil(tau / interval) (Fraboni et al., 2023)."""

    concurrency: int = 0  # clients in flight at once; 0: every client (the paper's setting)
    interval: float = 1.0  # dt, virtual seconds between aggregations
    server_lr: float = 1.0
    weights: str = "samples"  # p_i: "samples" (n_i / all clients' samples) or "equal" (1 / M)

    def __post_init__(self) -> None:
        concurrency("fedfix", self.concurrency)
        if not 0.0 < self.interval < float("inf"):
            raise ValueError(f"fedfix: interval must be a positive number of seconds, got {self.interval}")
        positive("fedfix", "server_lr", self.server_lr)
        if self.weights not in SAMPLE_WEIGHTS:
            raise ValueError(f"fedfix: weights must be one of {', '.join(SAMPLE_WEIGHTS)}, got {self.weights!r}")

    def build(self, federation: Federation) -> FedFix:
        return FedFix(federation, self)


class FedFix(AsyncStrategy):
    def __init__(self, federation: Federation, config: FedFixConfig) -> None:
        self.config = config
        self.concurrency = check_concurrency(config.concurrency, federation.num_clients)
        self.num_trainable = federation.num_trainable
        self.sizes = client_sizes(federation, config.weights)  # n_i; None: not known (a probe that never aggregates)
        self.ticks = 0  # ticks so far; the next one is at (ticks + 1) * interval
        self.last_tick = 0.0  # when clients may start: time 0, then the latest tick
        self.buffer = WeightedMean()  # this tick's updates, weighted ceil(tau_i / dt) * n_i
        self.waiting: set[int] = set()  # clients that arrived since the latest tick

    def select(self, now: float, idle: np.ndarray, slots: int, rng: np.random.Generator) -> list[Start]:
        """Start idle clients only at time 0 or at the latest tick, never one whose update waits for the next."""
        if now != self.last_tick:
            return []
        ready = idle[~np.isin(idle, sorted(self.waiting))]
        return [Start(c) for c in sample_idle(ready, slots, rng)]

    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> None:
        """Buffer the update with weight ceil(tau / interval) * n_i; the client waits for the next tick."""
        if self.sizes is None:
            raise ValueError('fedfix: weights "samples" needs every client\'s train size (Federation.train_sizes)')
        ticks_out = max(1, round(self.ticks + 1 - arrival.start_time / self.config.interval))
        self.buffer.add(arrival.update, ticks_out * float(self.sizes[arrival.client_id]))
        self.waiting.add(arrival.client_id)
        return None

    def next_timer(self) -> float:
        return (self.ticks + 1) * self.config.interval

    def on_timer(self, now: float, global_params: Tensor) -> Tensor | None:
        """Publish x + server_lr * sum_i d_i update_i over the buffered updates (their weighted mean times their
        weight over all clients' samples), if any arrived; the waiting clients become idle."""
        self.ticks, self.last_tick = self.ticks + 1, now
        self.waiting.clear()
        if self.buffer.count == 0:
            return None
        buffer, self.buffer = self.buffer, WeightedMean()
        mean = buffer.result()
        step = mean * (self.config.server_lr * buffer.total_weight / float(self.sizes.sum()))
        step[self.num_trainable :] = mean[self.num_trainable :]
        return (global_params.to(torch.float64) + step).to(global_params.dtype)


def client_sizes(federation: Federation, weights: str) -> np.ndarray | None:
    """n_i for every client: its training samples ("samples") or 1 ("equal"); None where the sizes are not known."""
    if weights == "equal":
        return np.ones(federation.num_clients)
    if not federation.train_sizes:
        return None
    if len(federation.train_sizes) != federation.num_clients:
        raise ValueError(f"fedfix: {len(federation.train_sizes)} train sizes for {federation.num_clients} clients")
    return np.asarray(federation.train_sizes, dtype=np.float64)


@dataclass
class AsyncFedAvgConfig:
    """Async FedAvg: apply every arrival at once, weighted (sum_j 1/tau_j) tau_i / M against fast clients (Fraboni)."""

    concurrency: int = 0  # clients in flight at once; 0: every client (the paper's setting)
    server_lr: float = 1.0
    correction: bool = True  # False: d_i = 1 (the paper's "identical" weights)

    def __post_init__(self) -> None:
        concurrency("async_fedavg", self.concurrency)
        positive("async_fedavg", "server_lr", self.server_lr)

    def build(self, federation: Federation) -> AsyncFedAvg:
        return AsyncFedAvg(federation, self)


class AsyncFedAvg(AsyncStrategy):
    def __init__(self, federation: Federation, config: AsyncFedAvgConfig) -> None:
        self.config = config
        self.concurrency = check_concurrency(config.concurrency, federation.num_clients)
        self.duration_sum = np.zeros(federation.num_clients)  # seconds of each client's observed tasks
        self.duration_count = np.zeros(federation.num_clients, dtype=np.int64)

    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> Tensor:
        """x + server_lr * d_i * update_i, published at once."""
        weight = self.weight(arrival) if self.config.correction else 1.0
        return apply_mean_update(global_params, weight * arrival.update.to(torch.float64), self.config.server_lr)

    def weight(self, arrival: Arrival) -> float:
        """Record the arrival's duration; d_i = tau_i * mean over the clients seen of 1 / tau_j."""
        client = arrival.client_id
        self.duration_sum[client] += max(arrival.time - arrival.start_time, MIN_SECONDS)
        self.duration_count[client] += 1
        seen = self.duration_count > 0
        durations = self.duration_sum[seen] / self.duration_count[seen]
        own = self.duration_sum[client] / self.duration_count[client]
        return float(own * np.mean(1.0 / durations))
