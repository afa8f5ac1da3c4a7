"""CHOCO-SGD: Koloskova, Stich and Jaggi, "Decentralized Stochastic Optimization and Gossip Algorithms with Compressed
Communication" (ICML 2019), in the paper's ordering (also decentralizepy's `sharing/Choco.py`):

    x_i^half = x_i + Delta_i                                   local training
    q_i = Q(x_i^half - xhat_i);  xhat_i += q_i                  send q_i (compressed) to the out-neighbours
    s_i += sum_j w_ij q_j                                      s_i = sum_j w_ij xhat_j, self included (memory-efficient)
    x_i = x_i^half + gamma (s_i - xhat_i)

Every replica xhat starts at 0, so s starts at 0 too. With the identity compressor and gamma = 1 the round is exact
gossip in ATC form, x <- W x^half. gamma must be tuned to the compressor (the reference code grid-searches it).
The compressor is handed in by the runtime (built from the configured codec); it needs the round number, which the
contract's `message` does not carry, so the strategy records it in `gossip_steps(round)`, called first every round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies.gossip.base import Compressor, GossipStrategy, Network, NodeState
from strategies.options import require


class IdentityCompressor:
    """No compression: receivers get the tensor itself; 4 bytes a value (float32 on the wire)."""

    def compress(self, tensor: Tensor, node: int, round: int) -> tuple[Tensor, int]:
        return tensor, 4 * tensor.numel()


class Choco(GossipStrategy):
    """Compressed differences to public replicas, and a consensus step of size gamma towards the replicas' mix."""

    def __init__(self, network: Network, gamma: float, compressor: Compressor | None = None) -> None:
        self.network = network
        self.gamma = gamma
        self.compressor: Compressor = compressor if compressor is not None else IdentityCompressor()
        self.round = 0

    def initial_state(self, node: int, params: Tensor) -> NodeState:
        """xhat_i = 0 and s_i = sum_j w_ij xhat_j = 0."""
        return {"hat": torch.zeros_like(params), "s": torch.zeros_like(params)}

    def begin_round(self, round: int) -> None:
        self.round = round

    def message(self, node: int, step: int, before: Tensor, current: Tensor, state: NodeState) -> Tensor:
        """q_i = Q(x_i - xhat_i); the node's own replica moves by q_i at once."""
        q = self.compressor.compress(current - state["hat"], node, self.round)[0].to(current.dtype)
        state["hat"].add_(q)
        return q

    def combine(self, node: int, step: int, before: Tensor, current: Tensor, mixed: Tensor, state: NodeState,
                inbox: list[tuple[int, float, Tensor]] | None = None) -> Tensor:
        """s_i += sum_j w_ij q_j; x_i + gamma (s_i - xhat_i)."""
        state["s"].add_(mixed)
        return current + self.gamma * (state["s"] - state["hat"])


@dataclass
class ChocoConfig:
    """CHOCO-SGD: compressed gossip of differences to public replicas, consensus step gamma (Koloskova et al., 2019)."""

    decentralized: ClassVar[bool] = True  # the registry's mark of a gossip strategy

    gamma: float = 0.5  # consensus step size; tune it to the compressor
    compression: str = "topk:ratio=0.1"  # codec spec; the runtime builds (and the config reader checks) it

    def __post_init__(self) -> None:
        require("choco", 0.0 < self.gamma <= 1.0, f"gamma must lie in (0, 1], got {self.gamma}")

    def build(self, network: Network, compressor: Compressor | None = None) -> Choco:
        """`compressor`: built by the runtime from `compression`; None gives exact (identity) messages."""
        return Choco(network, self.gamma, compressor)
