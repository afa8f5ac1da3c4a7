"""Dense codecs that only change how each value is stored: identity (the input's own dtype), fp16 and bf16 casts."""

from __future__ import annotations

import torch
from torch import Tensor

from transport.codecs.base import Codec, Payload, State
from transport.codecs.common import expect, flat_input, length, require


class IdentityCodec(Codec):
    """The values as they are, in the input's dtype (4 bytes a value for float32, 8 for float64): lossless.

    No copy is made: the payload's part is the (detached, CPU) input itself and `decode` returns that part. A caller
    that modifies a tensor in place after handing it over must clone it first; serializing the part copies anyway.
    """

    name = "identity"
    lossless = True
    unbiased = True

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Wrap `x` in a payload without copying it."""
        x = flat_input(x)
        return Payload(self.name, tuple(x.shape), x.dtype, {}, {"values": x}), state

    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """The payload's values, in the original dtype."""
        expect(payload, self.name)
        values = payload.parts["values"]
        require(values.dim() == 1 and values.numel() == length(payload), "payload values do not match its shape")
        return values.to(payload.dtype), state

    def payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """One value of `dtype` per entry."""
        return numel * dtype.itemsize


class CastCodec(Codec):
    """Each value rounded to a narrower float (float16 or bfloat16) on the wire; decoded back to the input's dtype.

    fp16 keeps 11 significant bits but overflows to +-inf beyond 65504; bf16 keeps float32's range with 8 bits.
    Deterministic and biased only by rounding to nearest.
    """

    lossless = False
    unbiased = False

    def __init__(self, wire_dtype: torch.dtype, name: str) -> None:
        if wire_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"CastCodec sends float16 or bfloat16, got {wire_dtype}")
        self.wire_dtype, self.name = wire_dtype, name

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Round every value to the wire dtype."""
        x = flat_input(x)
        return Payload(self.name, tuple(x.shape), x.dtype, {}, {"values": x.to(self.wire_dtype)}), state

    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """Widen the values back to the original dtype."""
        expect(payload, self.name)
        values = payload.parts["values"]
        require(values.dim() == 1 and values.numel() == length(payload), "payload values do not match its shape")
        return values.to(payload.dtype), state

    def payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """One value of the wire dtype per entry."""
        return numel * self.wire_dtype.itemsize


def fp16() -> CastCodec:
    """IEEE half precision on the wire: 2 bytes a value."""
    return CastCodec(torch.float16, "fp16")


def bf16() -> CastCodec:
    """bfloat16 on the wire: 2 bytes a value, float32's exponent range."""
    return CastCodec(torch.bfloat16, "bf16")
