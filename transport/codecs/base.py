"""The codec contract: what travels on the wire for one tensor, and the pair of functions that make and read it.

Both sides may keep state: the sender's (error-feedback residuals) lives in the client state store for uplinks and on
the server for downlinks; the receiver's (EF21's running estimate of each sender's tensor) lives with the receiver,
keyed by sender. A codec without state passes `state` through unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

State = dict[str, Tensor]


@dataclass
class Payload:
    """One encoded tensor: enough to rebuild it, and nothing a pickle would be needed for."""

    codec: str  # the codec's name, e.g. "topk+int8"
    shape: tuple[int, ...]  # of the decoded tensor
    dtype: torch.dtype  # of the decoded tensor
    params: dict[str, float] = field(default_factory=dict)  # e.g. {"k": 1000.0}
    parts: dict[str, Tensor] = field(default_factory=dict)  # compact CPU tensors: the bytes that travel

    def nbytes(self) -> int:
        """Bytes of the parts: what the wire carries beyond a small fixed header."""
        return sum(t.numel() * t.element_size() for t in self.parts.values())


class Codec(ABC):
    """encode(x, state) -> (payload, state) on the sender; decode(payload, state) -> (x_hat, state) on the receiver."""

    name: str = "codec"
    lossless: bool = False  # decode(encode(x)) == x bit for bit
    unbiased: bool = False  # E[decode(encode(x))] == x over the generator's randomness

    @abstractmethod
    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Compress a 1-D float tensor; `generator` drives any randomness (seeded by the caller)."""

    @abstractmethod
    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """Rebuild the tensor from a payload."""

    @abstractmethod
    def payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """Exactly `encode(x, ...)[0].nbytes()` for any 1-D `x` of `numel` entries of `dtype`, whatever its values."""
