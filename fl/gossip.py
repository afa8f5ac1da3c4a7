"""One gossip round's communication, shared by every engine: messages, mixing over the round's matrix, combine.

All node parameters are one [nodes, params] tensor. `gossip_round` runs the strategy's gossip steps after local
training: each node's message, the mixed messages W @ M (a sparse product in float64, row by row in a fixed order,
so the result never depends on how the nodes were trained), and each node's combine. `carry` moves the messages
(the identity in memory; an engine that sends them over a channel returns what arrived and counts the bytes).
Before any message leaves, every engine checks each node's own training (`check_training`): a node whose training
diverged stops the run with `Diverged`, not with a neighbour's refusal that would read like an attack.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fl.bounds import divergence
from fl.errors import Diverged
from strategies.gossip.base import GossipStrategy, NodeState

MixingFn = Callable[[int, int], sp.csr_matrix]  # (round, gossip step) -> W, row i: the weights node i gives to each j
Carry = Callable[[Tensor, int, int], Tensor]  # (messages, round, step) -> what the receivers get


def mix(weights: sp.csr_matrix, messages: Tensor) -> Tensor:
    """W @ M in float64 (scipy sums every row in the matrix's column order), in the messages' dtype."""
    mixed = sp.csr_matrix(weights, dtype=np.float64) @ messages.detach().to(torch.float64).numpy()
    return torch.from_numpy(np.ascontiguousarray(mixed)).to(messages.dtype)


def inbox(weights: sp.csr_matrix, messages: Tensor, node: int) -> list[tuple[int, float, Tensor]]:
    """(sender j, w_ij, message_j) for every in-neighbour of `node` and itself, in ascending sender order."""
    row = weights.getrow(node)
    order = np.argsort(row.indices)
    return [(int(row.indices[k]), float(row.data[k]), messages[int(row.indices[k])]) for k in order]


def diverged(round: int, node: int, why: str) -> Diverged:
    """The one-line error of a node whose own training diverged."""
    return Diverged(f"round {round}: node {node}'s training diverged ({why}): try a smaller client.lr")


def check_training(round: int, node: int, loss: float, update: Tensor, start: Tensor, max_update_norm: float) -> None:
    """Raise `diverged` when the node's training of `round` from `start` gave a NaN or Inf loss or update, or an
    update beyond the norm bound (fl.bounds)."""
    why = divergence(loss, update, start, max_update_norm)
    if why is not None:
        raise diverged(round, node, why)


def gossip_round(strategy: GossipStrategy, round: int, before: Tensor, trained: Tensor, mixing: MixingFn,
                 states: Sequence[NodeState], carry: Carry | None = None) -> Tensor:
    """The nodes' parameters after the round's gossip steps; `before` holds them at the round's start and
    `trained` after local training. Updates `states` in place."""
    current = trained
    for step in range(strategy.gossip_steps(round)):
        messages = torch.stack([strategy.message(i, step, before[i], current[i], states[i])
                                for i in range(len(current))])
        if carry is not None:
            messages = carry(messages, round, step)
        weights = mixing(round, step)
        mixed = mix(weights, messages)
        current = torch.stack([
            strategy.combine(i, step, before[i], current[i], mixed[i], states[i],
                             inbox(weights, messages, i) if strategy.needs_inbox else None)
            for i in range(len(current))])
    return current
