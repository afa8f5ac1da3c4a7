"""Push-sum gossip, as in Stochastic Gradient Push (SGP): Assran, Loizou, Ballas and Rabbat, "Stochastic Gradient
Push for Distributed Deep Learning" (ICML 2019); push-sum itself is Kempe, Dobra and Gehrke (FOCS 2003).

Only column-stochastic mixing is needed (directed graphs: node j splits what it sends, sum_i p_ij = 1). Every node
keeps a numerator x_i (the runtime's per-node parameters) and a push-sum weight w_i (state, 1 at the start); its model
is the de-biased ratio z_i = x_i / w_i. A round, in the paper's form:

    z_i = x_i / w_i                      local training starts at z_i (`train_from`)
    x_i = x_i + Delta_i                  Delta_i = z_i^trained - z_i, i.e. x <- x - gamma g(z) applied to the numerator
    x_i = sum_j p_ij x_j,  w_i = sum_j p_ij w_j      one message cat(x_j, w_j) of d + 1 entries

Evaluation and consensus metrics must use z_i = x_i / w_i: `debias(node, params, state)`. With a doubly stochastic
matrix every w_i stays 1 and push-sum is D-PSGD in ATC order (the SGP code's "lazy mixing"). The whole flat vector,
buffers included, is a numerator. The weight is kept in the parameters' dtype (the mix runs in float64, cast back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies.gossip.base import GossipStrategy, Network, NodeState


class PushSum(GossipStrategy):
    """Numerator and weight mixed together over a column-stochastic matrix; the model is their ratio."""

    mixing = "column"

    def __init__(self, network: Network) -> None:
        self.network = network

    def initial_state(self, node: int, params: Tensor) -> NodeState:
        return {"weight": torch.ones(1, dtype=params.dtype)}

    def train_from(self, node: int, params: Tensor, state: NodeState) -> Tensor:
        """The de-biased model z = x / w: local training runs there, its update is added to the numerator x."""
        return self.debias(node, params, state)

    def debias(self, node: int, params: Tensor, state: NodeState) -> Tensor:
        """The node's model z = x / w, for training, evaluation and consensus metrics."""
        return params / state["weight"]

    model_of = debias  # the name proposed for the base contract (default there: the identity)

    def message(self, node: int, step: int, before: Tensor, current: Tensor, state: NodeState) -> Tensor:
        """cat(x_i, w_i): d + 1 entries; receivers get p_ij times both."""
        return torch.cat([current, state["weight"].to(current.dtype)])

    def combine(self, node: int, step: int, before: Tensor, current: Tensor, mixed: Tensor, state: NodeState,
                inbox: list[tuple[int, float, Tensor]] | None = None) -> Tensor:
        """x_i = sum_j p_ij x_j (returned), w_i = sum_j p_ij w_j (kept in `state`)."""
        d = current.numel()
        state["weight"] = mixed[d:].clone()
        return mixed[:d].clone()


@dataclass
class PushSumConfig:
    """Push-sum (SGP): gossip over column-stochastic (directed) mixing with de-biasing weights (Assran et al., 2019)."""

    decentralized: ClassVar[bool] = True  # the registry's mark of a gossip strategy

    def build(self, network: Network) -> PushSum:
        return PushSum(network)
