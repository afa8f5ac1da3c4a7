"""Variance-corrected averaging: Tian, Al-Ars, Kitsak and Hofstee, "Vanishing Variance Problem in Fully Decentralized
Neural-Network Systems" (arXiv 2404.04616, 2024). The rule follows the reference code (DFL2 `train_average_standard`,
DFL_torch `model_variance_correct.py`) with the "FollowOthers" reference variance:

    received m_1..m_K from the OTHER nodes (the mixing weights only say who is a neighbour)
    mixed   = c own + (1 - c) (1/K) sum_k m_k                  c = `conservative`; 0: plain average of the received
    for every trainable tensor l with more than one element:
        target = (1/K) sum_k Var(m_k[l]);  mu, var = mean and Var of mixed[l]
        mixed[l] = (mixed[l] - mu) sqrt((target + eps) / (var + eps)) + mu

Var is the population variance over all elements of the tensor (per tensor, not per neuron), as in the C++ simulator:
with eps = 0 the result then has exactly the reference variance, and the reference needs no second-order
correction for tensor size. Buffers (BatchNorm statistics) and one-element tensors are only averaged. The mean is
preserved. A tensor whose variance and eps are both 0 (constant, eps = 0) is left as averaged; a node that received
nothing keeps its model. Arithmetic runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies.gossip.base import GossipStrategy, Network, NodeState
from strategies.options import in_range, non_negative


def population_variance(tensor: Tensor) -> Tensor:
    return tensor.var(correction=0)


class VarianceCorrected(GossipStrategy):
    """Equal-weight averaging of the received models with the own one, then per-tensor variance rescaling."""

    needs_inbox = True

    def __init__(self, network: Network, conservative: float = 0.5, eps: float = 1e-4) -> None:
        self.network = network
        self.conservative = conservative
        self.eps = eps
        layout = network.layout
        self.corrected = [slice(offset, offset + size)
                          for offset, size, trainable in zip(layout.offsets, layout.sizes, layout.trainable)
                          if trainable and size > 1]

    def combine(self, node: int, step: int, before: Tensor, current: Tensor, mixed: Tensor, state: NodeState,
                inbox: list[tuple[int, float, Tensor]] | None = None) -> Tensor:
        """c own + (1 - c) mean(received), each trainable tensor rescaled to the received models' mean variance."""
        if inbox is None:
            raise ValueError("variance-corrected averaging needs the inbox (needs_inbox)")
        received = [message.to(torch.float64) for sender, _, message in inbox if sender != node]
        if not received:
            return current.clone()
        c = self.conservative
        out = c * current.to(torch.float64) + (1 - c) * torch.stack(received).mean(0)
        for part in self.corrected:
            target = torch.stack([population_variance(m[part]) for m in received]).mean()
            mu, var = out[part].mean(), population_variance(out[part])
            if float(var) + self.eps > 0:
                out[part] = (out[part] - mu) * torch.sqrt((target + self.eps) / (var + self.eps)) + mu
        return out.to(current.dtype)


@dataclass
class VarianceCorrectedConfig:
    """Variance-corrected averaging: gossip that restores the received models' weight variance (Tian et al., 2024)."""

    decentralized: ClassVar[bool] = True  # the registry's mark of a gossip strategy

    conservative: float = 0.5  # weight c of the own model; 0: plain average of the received models
    eps: float = 1e-4  # in sqrt((target + eps) / (var + eps)), as in DFL_torch; 0 allowed

    def __post_init__(self) -> None:
        in_range("variance_corrected", "conservative", self.conservative, 0.0, 1.0)
        non_negative("variance_corrected", "eps", self.eps)

    def build(self, network: Network) -> VarianceCorrected:
        return VarianceCorrected(network, self.conservative, self.eps)
