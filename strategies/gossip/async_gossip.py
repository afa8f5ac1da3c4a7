"""Asynchronous gossip learning on the virtual clock (Ormandi, Hegedus and Jelasity, "Gossip learning with linear
models on fully distributed data", 2013; the "wake, train, send to one random peer, merge" loop).

Each node works at its own pace: when it wakes (its task time from its device profile), it adds its local update to
its model, sends the model to one neighbour drawn at random, and starts training again; a node that receives a model
merges it at once: x_j <- (1 - a) x_j + a x_i (a = `merge`, 1/2 by default: the plain average of the pair). There are
no rounds: the runtime reports one row per `num_nodes` wake-ups. The average of the nodes is not preserved (a merge
moves one node only), which is the price of needing no coordination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies.gossip.base import GossipStrategy, Network, NodeState
from strategies.options import require


class AsyncGossip(GossipStrategy):
    def __init__(self, network: Network, merge: float) -> None:
        self.network, self.merge = network, merge

    def combine(self, node: int, step: int, before: Tensor, current: Tensor, mixed: Tensor, state: NodeState,
                inbox: list[tuple[int, float, Tensor]] | None = None) -> Tensor:
        """The receiver's merge; `mixed` is the model it received (one sender, weight 1)."""
        wide = torch.float64
        return ((1.0 - self.merge) * current.to(wide) + self.merge * mixed.to(wide)).to(current.dtype)


@dataclass
class AsyncGossipConfig:
    """Async gossip: each node wakes at its own pace, trains, and sends its model to one random neighbour."""

    decentralized: ClassVar[bool] = True  # the registry's mark of a gossip strategy
    asynchronous: ClassVar[bool] = True  # runs on the virtual clock, one wake-up at a time

    merge: float = 0.5  # the weight a receiver gives the model it receives

    def __post_init__(self) -> None:
        require("async_gossip", 0.0 < self.merge <= 1.0, f"merge must lie in (0, 1], got {self.merge}")

    def build(self, network: Network) -> AsyncGossip:
        return AsyncGossip(network, self.merge)
