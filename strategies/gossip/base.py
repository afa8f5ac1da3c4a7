"""The contract of a gossip (decentralized) strategy.

There is no server. In every round each node runs local training from its own parameters, then takes
`gossip_steps(round)` gossip steps: in each step it sends one message to its out-neighbours (`message`) and combines
what it received (`combine`). The runtime in `fl/` moves the messages (over a channel, counted per edge) and gives
`combine` the mixed message `sum_j w_ij m_j` over its in-neighbours j and itself, with the weights w_ij of the
round's mixing matrix W (row i: what node i takes from each j). A strategy that needs the individual messages (e.g.
to compare their variances) sets `needs_inbox` and also gets the list of (j, w_ij, m_j). Everything is a flat tensor of
one node; per-node state (push-sum weights, CHOCO replicas) lives in the `state` dict the runtime keeps per node.
A strategy never sees threads, Ray or transport; one that compresses receives a `Compressor` (below), built by the
runtime from the configured codec.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from strategies.base import ClientAlgorithm, Scalar

NodeState = dict[str, Tensor]


class Compressor(Protocol):
    """Lossy compression of one node's message: what the receivers decode (encode then decode, one call)."""

    def compress(self, tensor: Tensor, node: int, round: int) -> tuple[Tensor, int]:
        """(what every receiver gets, the bytes it costs on the wire)."""


@dataclass(frozen=True)
class Layout:
    """Where each tensor of the model sits in the flat vector (for per-tensor rules such as variance correction)."""

    names: tuple[str, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    trainable: tuple[bool, ...]  # False: a buffer (e.g. BatchNorm running statistics)


@dataclass(frozen=True)
class Network:
    """What a gossip strategy knows when it is built."""

    num_nodes: int
    num_params: int
    num_trainable: int
    layout: Layout
    dtype: torch.dtype = torch.float32


class GossipStrategy(ABC):
    """Local training, then gossip steps of (message, combine) per node."""

    client_algorithm: ClientAlgorithm | None = None  # changes the local step (e.g. SAM)
    mixing: str = "symmetric"  # "symmetric": W doubly stochastic; "column": column-stochastic (push-sum)
    needs_inbox: bool = False  # combine also gets (j, w_ij, message_j) for its in-neighbours and itself, ascending j

    def train_config(self, round: int) -> dict[str, Scalar]:
        """Overrides of the local training config for every node this round."""
        return {}

    def train_from(self, node: int, params: Tensor, state: NodeState) -> Tensor:
        """The point local training starts from (push-sum: the de-biased x / w); the update is added to `params`."""
        return params

    def begin_round(self, round: int) -> None:
        """Called once at the start of every round, before training (e.g. to key a compressor's draws)."""

    def gossip_steps(self, round: int) -> int:
        return 1

    def message(self, node: int, step: int, before: Tensor, current: Tensor, state: NodeState) -> Tensor:
        """What the node sends to its out-neighbours in gossip step `step` (0, 1, ...). `before`: its parameters at
        the round's start; `current`: after local training (and the previous gossip steps). Default: `current`."""
        return current

    @abstractmethod
    def combine(self, node: int, step: int, before: Tensor, current: Tensor, mixed: Tensor, state: NodeState,
                inbox: list[tuple[int, float, Tensor]] | None = None) -> Tensor:
        """The node's parameters after gossip step `step`; `mixed` = sum_j w_ij message_j (itself included).
        May update `state` in place (it is the node's own)."""

    def initial_state(self, node: int, params: Tensor) -> NodeState:
        """A node's state before round 1 (empty by default)."""
        return {}

    def model_of(self, node: int, params: Tensor, state: NodeState) -> Tensor:
        """The model a node's parameters stand for, for evaluation and consensus (push-sum: x / w)."""
        return params
