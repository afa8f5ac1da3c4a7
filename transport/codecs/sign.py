"""Scaled sign compression: one bit per value and one float32 scale, the mean |x_i| (EF-SignSGD's ||x||_1 / n)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from transport.codecs.base import Codec, Payload, State
from transport.codecs.common import compute_dtype, expect, flat_input, length, require


class SignCodec(Codec):
    """x_hat_i = scale * sign(x_i) with scale = ||x||_1 / n (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD";
    the signs alone are signSGD's message, Bernstein et al. 2018). Zeros decode as +scale. Biased: pair it with
    error feedback. Bits are packed 8 to a byte, first entry in the high bit (numpy.packbits, about 70x faster than
    the same packing in torch). Wire: ceil(n / 8) + 4 bytes.
    """

    name = "sign"

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Pack the negative-sign bits and the mean magnitude."""
        x = flat_input(x)
        n = x.numel()
        l1 = torch.linalg.vector_norm(x.to(compute_dtype(x.dtype)), ord=1) if n else torch.tensor(0.0)
        scale = (l1 / max(n, 1)).to(torch.float32).reshape(1)
        bits = torch.from_numpy(np.packbits((x < 0).numpy()))
        return Payload(self.name, tuple(x.shape), x.dtype, {}, {"bits": bits, "scale": scale}), state

    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """+scale where the bit is 0, -scale where it is 1."""
        expect(payload, self.name)
        n, bits, scale = length(payload), payload.parts["bits"], payload.parts["scale"]
        well_formed = bits.dtype == torch.uint8 and bits.numel() == -(-n // 8) and scale.numel() == 1
        require(well_formed, "malformed sign payload")
        scale = float(scale[0])
        negative = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).view(np.bool_))
        return torch.full((n,), scale, dtype=payload.dtype).masked_fill_(negative, -scale), state

    def payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """One bit per entry, packed into whole bytes, and one float32 scale."""
        return -(-numel // 8) + torch.float32.itemsize
