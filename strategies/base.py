"""The contract of a synchronous strategy and of the client-side hook that changes a local step.

A strategy never sees transport, Ray or threads: the runtime in `fl/` calls `configure` to learn who trains with which
settings, runs those clients, and streams their replies into `aggregate` one at a time, in the order they arrive on
the virtual clock (equal times by client id: the order of the instructions when every client is instantaneous). Parameters are flat 1-D tensors: trainable entries first (`Federation.num_trainable` of them), then
buffers such as BatchNorm statistics.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

Scalar = bool | int | float | str


@dataclass(frozen=True)
class Federation:
    """What a strategy knows about the population when it is built."""

    num_clients: int
    per_round: int
    num_params: int  # length of the flat vector, buffers included
    num_trainable: int  # the leading entries that an optimizer trains
    dtype: torch.dtype = torch.float32  # of the global parameters
    train_sizes: tuple[int, ...] = ()  # each client's training samples, by id (empty: not known, e.g. a probe)


@dataclass(frozen=True)
class TensorSpec:
    """The shape and dtype of a tensor a reply must carry."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class Instruction:
    """What one client does this round."""

    client_id: int
    config: dict[str, Scalar] = field(default_factory=dict)  # overrides of the client training config, e.g. {"lr": 0.01}
    tensors: dict[str, Tensor] = field(default_factory=dict)  # extra downlink tensors for the client hook


@dataclass
class Reply:
    """What one client sends back after training."""

    client_id: int
    update: Tensor  # local parameters minus the global parameters the client started from
    num_samples: int
    metrics: dict[str, float]  # always holds "loss", "steps" and "lr"
    tensors: dict[str, Tensor] = field(default_factory=dict)  # extra uplink tensors from the client hook


@dataclass
class HookResult:
    """What a client hook leaves behind: state kept for the client's next round, and tensors sent to the server."""

    state: dict[str, Tensor] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)


class ClientHook:
    """Changes the local step of one client. The default changes nothing."""

    def perturbation(self, params: Tensor, grad: Tensor) -> Tensor | None:
        """A point to take the gradient at instead: the trainer recomputes the loss and gradient on the same
        mini-batch at params + the returned tensor (SAM), then restores params. None (the default): no second pass."""
        return None

    def on_gradient(self, params: Tensor, grad: Tensor) -> None:
        """Adjust `grad` (flat, trainable entries) in place before the optimizer step."""

    def on_finish(self, params: Tensor, steps: int, lr: float) -> HookResult:
        """Called once after local training with the final trainable parameters."""
        return HookResult()


class ClientAlgorithm(ABC):
    """Shipped to every worker once; `start` makes the hook for one client's local training."""

    @abstractmethod
    def start(self, global_params: Tensor, tensors: dict[str, Tensor], state: dict[str, Tensor]) -> ClientHook:
        """`global_params` are the trainable entries the client starts from; `state` is its stored state (or empty)."""


class SyncStrategy(ABC):
    """A synchronous round: pick clients and their settings, then fold their replies into a new global model."""

    client_algorithm: ClientAlgorithm | None = None
    reply_tensors: dict[str, TensorSpec] = {}  # what every reply's `tensors` must hold, exactly (checked on receipt)

    @abstractmethod
    def configure(
        self, round: int, global_params: Tensor, available: Sequence[int], rng: np.random.Generator
    ) -> list[Instruction]:
        """Choose who trains this round (from `available`) and with which settings."""

    @abstractmethod
    def aggregate(self, round: int, global_params: Tensor, replies: Iterable[Reply]) -> tuple[Tensor, dict[str, float]]:
        """Consume replies one at a time and return the new global parameters and server-side metrics.

        The contract with the runtime: `global_params` is the strategy's own copy, and the runtime keeps a copy of
        what this returns, so changing a tensor in place (the input, or one returned before) changes nothing that
        clients hold. Every call that returns publishes a new global version; whether the parameters changed is
        never judged by object identity. A round in which no client arrived does not call `aggregate`."""


class WeightedMean:
    """Streaming weighted mean in float64 (Welford form), so that one tensor of any weight comes back exactly."""

    def __init__(self) -> None:
        self.total_weight = 0.0
        self.count = 0
        self._mean: Tensor | None = None

    def add(self, value: Tensor, weight: float = 1.0) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.count += 1
        self.total_weight += weight
        if self._mean is None:
            self._mean = value.to(torch.float64, copy=True)
        elif self.total_weight > 0:
            self._mean.add_(value.to(torch.float64) - self._mean, alpha=weight / self.total_weight)

    def result(self) -> Tensor:
        """The mean in float64; raises if nothing was added."""
        if self._mean is None:
            raise ValueError("no values were added")
        return self._mean


def sample_uniform(available: Sequence[int], per_round: int, rng: np.random.Generator) -> list[int]:
    """`per_round` distinct clients drawn uniformly from `available` (all of them if fewer), in ascending order."""
    pool = np.asarray(available, dtype=np.int64)
    if len(pool) <= per_round:
        return sorted(pool.tolist())
    return sorted(rng.choice(pool, size=per_round, replace=False).tolist())


def apply_mean_update(global_params: Tensor, mean_update: Tensor, server_lr: float = 1.0) -> Tensor:
    """global + server_lr * mean_update, computed in float64 and cast back to the global dtype."""
    return (global_params.to(torch.float64) + server_lr * mean_update).to(global_params.dtype)
