"""SCAFFOLD with option II control variates (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", Algorithm 1).

Client i, starting from x with server variate c and its own c_i (0 the first time), takes K local steps
    y <- y - lr * (g_i(y) - c_i + c)
then sets c_i+ = c_i - c + (x - y) / (K * lr), keeps c_i+ and sends delta_c = c_i+ - c_i.
Server, over the sampled set S of N clients: x <- x + server_lr * mean_S(update), c <- c + |S|/N * mean_S(delta_c),
both unweighted means as in the paper. The variate formula assumes plain local SGD with a constant lr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from strategies.base import (
    ClientAlgorithm,
    ClientHook,
    Federation,
    HookResult,
    Instruction,
    Reply,
    SyncStrategy,
    TensorSpec,
    WeightedMean,
    apply_mean_update,
    sample_uniform,
)
from strategies.options import positive


class ControlVariateHook(ClientHook):
    def __init__(self, global_params: Tensor, server_c: Tensor, client_c: Tensor) -> None:
        self.global_params = global_params
        self.client_c = client_c
        self.correction = server_c - client_c

    def on_gradient(self, params: Tensor, grad: Tensor) -> None:
        grad.add_(self.correction)

    def on_finish(self, params: Tensor, steps: int, lr: float) -> HookResult:
        if steps == 0:  # nothing was learned about the local gradient: keep c_i
            return HookResult(state={"c": self.client_c}, tensors={"delta_c": torch.zeros_like(self.client_c)})
        new_c = (self.global_params - params) / (steps * lr) - self.correction
        return HookResult(state={"c": new_c}, tensors={"delta_c": new_c - self.client_c})


class ControlVariates(ClientAlgorithm):
    """Reads the server variate from `tensors["c"]` and the client's own from `state["c"]`."""

    def start(self, global_params: Tensor, tensors: dict[str, Tensor], state: dict[str, Tensor]) -> ClientHook:
        server_c = tensors["c"]
        client_c = state.get("c", torch.zeros_like(server_c))
        return ControlVariateHook(global_params.detach().clone(), server_c, client_c)


@dataclass
class ScaffoldConfig:
    """SCAFFOLD: control variates correct client drift (Karimireddy et al., 2020, option II)."""

    server_lr: float = 1.0

    def __post_init__(self) -> None:
        positive("scaffold", "server_lr", self.server_lr)

    def build(self, federation: Federation) -> "Scaffold":
        return Scaffold(federation, self)


class Scaffold(SyncStrategy):
    def __init__(self, federation: Federation, config: ScaffoldConfig) -> None:
        self.federation = federation
        self.config = config
        self.client_algorithm = ControlVariates()
        self.reply_tensors = {"delta_c": TensorSpec((federation.num_trainable,), federation.dtype)}
        self.c: Tensor | None = None  # server control variate, trainable entries, in the global dtype

    def configure(
        self, round: int, global_params: Tensor, available: Sequence[int], rng: np.random.Generator
    ) -> list[Instruction]:
        if self.c is None:
            self.c = torch.zeros(self.federation.num_trainable, dtype=global_params.dtype)
        chosen = sample_uniform(available, self.federation.per_round, rng)
        return [Instruction(cid, tensors={"c": self.c}) for cid in chosen]

    def aggregate(self, round: int, global_params: Tensor, replies: Iterable[Reply]) -> tuple[Tensor, dict[str, float]]:
        update, delta_c = WeightedMean(), WeightedMean()
        for reply in replies:
            update.add(reply.update)
            delta_c.add(reply.tensors["delta_c"])
        self.c = apply_mean_update(self.c, delta_c.result(), delta_c.count / self.federation.num_clients)
        return apply_mean_update(global_params, update.result(), self.config.server_lr), {}
