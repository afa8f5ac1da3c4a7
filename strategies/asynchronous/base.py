"""The contract of an asynchronous strategy.

Clients train on a snapshot of the global parameters and arrive one at a time, in virtual-time order (deployment:
in the order they really come). The runtime in `fl/` asks the strategy whom to start whenever a client slot is free
(`select`), hands it each arriving update with its staleness (`on_arrival`), and calls `on_timer` when the time the
strategy asked for (`next_timer`) comes. Whenever `on_arrival` or `on_timer` returns parameters, the runtime publishes
them as a new version. Staleness counts versions published since the client started, never seconds. A client has at
most one task in flight. A strategy never sees threads, Ray or transport, and never changes a tensor it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from strategies.base import ClientAlgorithm, Scalar, TensorSpec


@dataclass(frozen=True)
class Start:
    """Start one client's task: its training settings (e.g. {"steps": 20}) and how long it waits before it downloads
    the current version and begins (`delay`, virtual seconds; an anarchic client choosing when to participate)."""

    client_id: int
    config: dict[str, Scalar] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Arrival:
    """One client's update as it reaches the server."""

    client_id: int
    update: Tensor  # the client's final parameters minus `start_params`
    num_samples: int
    metrics: dict[str, float]  # always holds "loss", "steps" and "lr"
    staleness: int  # versions published between the client's start and this arrival
    start_version: int
    start_time: float  # when the client downloaded its version (virtual seconds; deployment: seconds since start)
    time: float  # when the update arrived
    start_params: Tensor  # the global parameters of `start_version`
    tensors: dict[str, Tensor] = field(default_factory=dict)


class AsyncStrategy(ABC):
    """Whom to start, what to do with each arrival, and when to publish a version."""

    client_algorithm: ClientAlgorithm | None = None
    reply_tensors: dict[str, TensorSpec] = {}
    concurrency: int = 1  # the most clients in flight at once (the runtime never starts more)
    max_staleness: int | None = None  # the runtime drops (and counts) arrivals staler than this; None: no limit

    def select(self, now: float, idle: np.ndarray, slots: int, rng: np.random.Generator) -> list[Start]:
        """Whom to start now: at most `slots` of the `idle` clients (online, none in flight; ascending ids). The
        default draws uniformly without replacement and starts them at once with the client config."""
        return [Start(int(c)) for c in sample_idle(idle, slots, rng)]

    @abstractmethod
    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> Tensor | None:
        """React to one arrival; return the new global parameters to publish a version, or None to publish none.
        `global_params` is the strategy's own copy of the current version."""

    def next_timer(self) -> float | None:
        """When `on_timer` should next be called (virtual seconds), or None for no timer; asked after every event."""
        return None

    def on_timer(self, now: float, global_params: Tensor) -> Tensor | None:
        """The time from `next_timer` has come: return new global parameters to publish a version, or None."""
        return None


def sample_idle(idle: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    """`count` distinct clients drawn uniformly from `idle` (all of them if fewer), in the order drawn."""
    if count <= 0 or len(idle) == 0:
        return []
    if len(idle) <= count:
        return [int(c) for c in idle]
    return [int(c) for c in rng.choice(idle, size=count, replace=False)]


def check_concurrency(concurrency: int, num_clients: int) -> int:
    """`concurrency`, or every client when it is 0; ValueError when negative."""
    if concurrency < 0:
        raise ValueError(f"concurrency must be >= 0 (0: every client), got {concurrency}")
    return min(concurrency, num_clients) if concurrency else num_clients
