"""DFedSAM and DFedSAM-MGS: Shi, Shen, Li, Wang, Dai and Tao, "Improving the Model Consistency of Decentralized
Federated Learning" (ICML 2023).

Every local step is a SAM step (Foret et al., 2021; the davda54/sam two-step form): with g = grad f_i(y; xi) the node
perturbs y by eps = rho g / ||g||_2 (the norm over the whole trainable vector), takes the gradient on the same
mini-batch at y + eps, restores y and steps with that gradient through the configured optimizer. After local training
the node takes Q gossip steps of plain mixing z <- W z (DFedSAM: Q = 1; DFedSAM-MGS, multiple gossip steps: Q > 1), so
a round mixes the trained models with W^Q. The perturbation goes through `ClientHook.perturbation`, which the trainer
honours with the second gradient pass; rho = 0 returns no perturbation, so DFedSAM is then exactly D-PSGD (ATC order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies.base import ClientAlgorithm, ClientHook
from strategies.gossip.base import GossipStrategy, Network, NodeState
from strategies.options import non_negative, require


class SAMHook(ClientHook):
    """Asks the trainer for the gradient at params + rho g / ||g||_2 (no second pass when rho = 0)."""

    def __init__(self, rho: float) -> None:
        self.rho = rho

    def perturbation(self, params: Tensor, grad: Tensor) -> Tensor | None:
        """eps = rho g / ||g||_2 in g's dtype (0 where g = 0); computed on g's device without a host sync."""
        if self.rho == 0.0:
            return None
        norm = torch.linalg.vector_norm(grad.to(torch.float64))
        scale = torch.where(norm > 0, self.rho / norm, torch.zeros_like(norm))
        return grad * scale.to(grad.dtype)


class SharpnessAware(ClientAlgorithm):
    """SAM local steps with radius `rho` (Foret et al., 2021), as used by DFedSAM."""

    def __init__(self, rho: float) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.rho = rho

    def start(self, global_params: Tensor, tensors: dict[str, Tensor], state: dict[str, Tensor]) -> ClientHook:
        return SAMHook(self.rho)


class DFedSAM(GossipStrategy):
    """SAM local training, then `gossip_steps` steps of plain mixing z <- W z."""

    def __init__(self, network: Network, rho: float, gossip_steps: int = 1) -> None:
        self.network = network
        self.client_algorithm = SharpnessAware(rho)
        self.steps = gossip_steps

    def gossip_steps(self, round: int) -> int:
        return self.steps

    def combine(self, node: int, step: int, before: Tensor, current: Tensor, mixed: Tensor, state: NodeState,
                inbox: list[tuple[int, float, Tensor]] | None = None) -> Tensor:
        """z^{q+1}_i = sum_j w_ij z^q_j (the message is the default, `current`)."""
        return mixed


@dataclass
class DFedSAMConfig:
    """DFedSAM: SAM local steps and one gossip step per round (Shi et al., ICML 2023)."""

    decentralized: ClassVar[bool] = True  # the registry's mark of a gossip strategy

    rho: float = 0.05  # SAM radius; 0 gives D-PSGD (ATC order) exactly

    def __post_init__(self) -> None:
        non_negative("dfedsam", "rho", self.rho)

    def build(self, network: Network) -> DFedSAM:
        return DFedSAM(network, self.rho, gossip_steps=1)


@dataclass
class DFedSAMMGSConfig:
    """DFedSAM-MGS: SAM local steps and Q gossip steps per round, i.e. mixing with W^Q (Shi et al., ICML 2023)."""

    decentralized: ClassVar[bool] = True  # the registry's mark of a gossip strategy

    rho: float = 0.05
    gossip_steps: int = 4  # Q

    def __post_init__(self) -> None:
        non_negative("dfedsam_mgs", "rho", self.rho)
        require("dfedsam_mgs", self.gossip_steps >= 1, f"gossip_steps must be >= 1, got {self.gossip_steps}")

    def build(self, network: Network) -> DFedSAM:
        return DFedSAM(network, self.rho, gossip_steps=self.gossip_steps)
