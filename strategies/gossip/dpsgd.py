"""D-PSGD, decentralized parallel SGD: Lian, Zhang, Zhang, Hsieh, Zhang and Liu, "Can Decentralized Algorithms
Outperform Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient Descent" (NeurIPS 2017).

Every round each node runs its local steps (update Delta_i = x_i^half - x_i), then takes one gossip step over the
round's mixing matrix W (symmetric, doubly stochastic), in one of two orders:

* "atc", adapt then combine (BlueFog's ATC optimizer, the exponential-graph reference code): the node sends its model
  after local training and keeps the mix, X <- W (X + Delta).
* "consensus", Lian's form X_{k+1} = W X_k - gamma g(X_k): the gradient is taken at the local, pre-mixing model; the
  node sends its model from the round's start and adds its own update to the mix, X <- W X + Delta. With one local step
  per round this is the paper's iteration exactly.

The whole flat vector is mixed, BatchNorm statistics included (as decentralizepy averages the whole state_dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies.gossip.base import GossipStrategy, Network, NodeState
from strategies.options import one_of

ORDERS = ("atc", "consensus")
# Both orders keep the nodes' average exactly as FedAvg moves it (W doubly stochastic): mean(X) <- mean(X + Delta).


class DPSGD(GossipStrategy):
    """One exact gossip step per round, after ("atc") or alongside ("consensus") the local steps."""

    def __init__(self, network: Network, order: str = "atc") -> None:
        """`order`: "atc" (message after the local steps) or "consensus" (message from the round's start)."""
        self.network = network
        self.order = order

    def message(self, node: int, step: int, before: Tensor, current: Tensor, state: NodeState) -> Tensor:
        """"atc": the model after local training; "consensus": the model at the round's start."""
        return current if self.order == "atc" else before

    def combine(self, node: int, step: int, before: Tensor, current: Tensor, mixed: Tensor, state: NodeState,
                inbox: list[tuple[int, float, Tensor]] | None = None) -> Tensor:
        """"atc": sum_j w_ij x_j^half; "consensus": sum_j w_ij x_j + Delta_i (summed in float64)."""
        if self.order == "atc":
            return mixed
        # The own update Delta_i = current - before is added back: it was computed at the pre-mixing model.
        wide = torch.float64
        return (mixed.to(wide) + (current.to(wide) - before.to(wide))).to(current.dtype)


@dataclass
class DPSGDConfig:
    """D-PSGD: local steps and one exact gossip step per round, in ATC or Lian's consensus order (Lian et al., 2017)."""

    decentralized: ClassVar[bool] = True  # the registry's mark of a gossip strategy

    order: str = "atc"  # "atc": X <- W (X + Delta); "consensus": X <- W X + Delta

    def __post_init__(self) -> None:
        one_of("dpsgd", "order", self.order, ORDERS)

    def build(self, network: Network) -> DPSGD:
        return DPSGD(network, self.order)
