"""A tiny decentralized round loop for gossip-strategy tests: closed-form quadratic nodes, the real `gossip_round`.

Node i has f_i(x) = 0.5 ||x - c_i||^2, so its gradient is x - c_i. Every round each node trains `steps` full-batch GD
steps with `lr` from `strategy.train_from(...)` through the strategy's client hook, SAM's second gradient included
(the trainer's contract: gradient at y + eps, same batch, y restored), its update is added to its parameters, and
`fl.gossip.gossip_round` runs the strategy's gossip steps over W. Everything runs in the dtype of `x0` (float64 in
the tests). Pure gossip: steps = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fl.gossip import gossip_round
from strategies.base import ClientHook
from strategies.gossip.base import GossipStrategy, NodeState

Mixing = np.ndarray | Callable[[int, int], np.ndarray]  # W, or (round, gossip step) -> W


@dataclass
class GossipRun:
    params: list[Tensor]  # [nodes, d] after each round, params[0] = x0
    states: list[NodeState]  # the nodes' states after the last round


def local_gd(strategy: GossipStrategy, start: Tensor, center: Tensor, steps: int, lr: float) -> Tensor:
    """`steps` GD steps on 0.5 ||y - center||^2 from `start` through the strategy's hook; returns the final y."""
    algorithm = strategy.client_algorithm
    hook = algorithm.start(start.clone(), {}, {}) if algorithm is not None else ClientHook()
    y = start.clone()
    for _ in range(steps):
        grad = y - center
        eps = hook.perturbation(y, grad)
        if eps is not None:
            grad = (y + eps) - center
        hook.on_gradient(y, grad)
        y -= lr * grad
    hook.on_finish(y, steps, lr)
    return y


def as_mixing(mixing: Mixing) -> Callable[[int, int], sp.csr_matrix]:
    if callable(mixing):
        return lambda round, step: sp.csr_matrix(mixing(round, step))
    matrix = sp.csr_matrix(mixing)
    return lambda round, step: matrix


def run_gossip(strategy: GossipStrategy, x0: Tensor, centers: Tensor, mixing: Mixing, rounds: int,
               steps: int = 0, lr: float = 0.1) -> GossipRun:
    """`rounds` rounds from x0 ([nodes, d]); node i's objective is centered at centers[i]."""
    params = x0.clone()
    states = [strategy.initial_state(i, params[i]) for i in range(len(params))]
    history = [params.clone()]
    weights = as_mixing(mixing)
    for round in range(rounds):
        strategy.begin_round(round)
        config = strategy.train_config(round)
        k, eta = int(config.get("steps", steps)), float(config.get("lr", lr))
        trained = []
        for i in range(len(params)):
            start = strategy.train_from(i, params[i], states[i])
            trained.append(params[i] + (local_gd(strategy, start, centers[i], k, eta) - start))
        params = gossip_round(strategy, round, params, torch.stack(trained), weights, states)
        history.append(params.clone())
    return GossipRun(history, states)


def spread(params: Tensor) -> float:
    """The largest distance of a node from the nodes' mean (0 at consensus)."""
    return float((params - params.mean(0)).norm(dim=1).max())
