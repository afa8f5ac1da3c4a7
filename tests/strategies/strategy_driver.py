"""A tiny round loop for strategy tests (no fl import): closed-form quadratic clients trained with full-batch local GD.

Client i has f_i(x) = 0.5 (x - a_i)^T H_i (x - a_i); the global objective sum_i f_i has its minimum at
x* = (sum_i H_i)^-1 sum_i H_i a_i. Everything runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strategies.base import ClientHook, Federation, Instruction, Reply, SyncStrategy


@dataclass
class Quadratic:
    hessians: Tensor  # (clients, dim, dim), symmetric positive definite
    centers: Tensor  # (clients, dim)

    def grad(self, client: int, x: Tensor) -> Tensor:
        return self.hessians[client] @ (x - self.centers[client])

    def loss(self, client: int, x: Tensor) -> float:
        diff = x - self.centers[client]
        return float(0.5 * diff @ self.hessians[client] @ diff)

    def optimum(self) -> Tensor:
        weighted_centers = torch.einsum("cij,cj->i", self.hessians, self.centers)
        return torch.linalg.solve(self.hessians.sum(0), weighted_centers)


def heterogeneous_quadratic(num_clients: int, dim: int, seed: int) -> Quadratic:
    """Random rotations with eigenvalues in [0.5, 2] and centers far apart, so that FedAvg drifts."""
    gen = torch.Generator().manual_seed(seed)
    rotations = torch.linalg.qr(torch.randn(num_clients, dim, dim, generator=gen, dtype=torch.float64)).Q
    eigenvalues = 0.5 + 1.5 * torch.rand(num_clients, dim, generator=gen, dtype=torch.float64)
    hessians = rotations @ torch.diag_embed(eigenvalues) @ rotations.transpose(1, 2)
    centers = 3.0 * torch.randn(num_clients, dim, generator=gen, dtype=torch.float64)
    return Quadratic(hessians, centers)


def federation_for(problem: Quadratic, per_round: int | None = None) -> Federation:
    num_clients, dim = problem.centers.shape
    return Federation(num_clients, per_round or num_clients, num_params=dim, num_trainable=dim)


def train_client(
    strategy: SyncStrategy, problem: Quadratic, global_params: Tensor, ins: Instruction, state: dict, steps: int, lr: float
) -> Reply:
    """Local GD from the global parameters through the strategy's client hook; updates `state` in place."""
    steps, lr = int(ins.config.get("steps", steps)), float(ins.config.get("lr", lr))
    params = global_params.clone()
    algorithm = strategy.client_algorithm
    hook = algorithm.start(global_params.clone(), ins.tensors, state.get(ins.client_id, {})) if algorithm else ClientHook()
    for _ in range(steps):
        grad = problem.grad(ins.client_id, params)
        hook.on_gradient(params, grad)
        params -= lr * grad
    result = hook.on_finish(params, steps, lr)
    state[ins.client_id] = result.state
    metrics = {"loss": problem.loss(ins.client_id, params), "steps": steps, "lr": lr}
    return Reply(ins.client_id, params - global_params, num_samples=1, metrics=metrics, tensors=result.tensors)


def run_rounds(
    strategy: SyncStrategy, problem: Quadratic, rounds: int, steps: int, lr: float, seed: int = 0
) -> Tensor:
    """`rounds` rounds from x = 0 with every client available; returns the final global parameters."""
    rng = np.random.default_rng(seed)
    global_params = torch.zeros(problem.centers.shape[1], dtype=torch.float64)
    available = list(range(problem.centers.shape[0]))
    state: dict[int, dict[str, Tensor]] = {}
    for round in range(rounds):
        instructions = strategy.configure(round, global_params, available, rng)
        replies = (train_client(strategy, problem, global_params, ins, state, steps, lr) for ins in instructions)
        global_params, _ = strategy.aggregate(round, global_params, replies)
    return global_params
