"""Composition: a sparsifier chooses coordinates, a value codec compresses the values it keeps (e.g. "topk+int8")."""

from __future__ import annotations

import torch
from torch import Tensor

from transport.codecs.base import Codec, Payload, State
from transport.codecs.common import expect
from transport.codecs.sparse import Sparsifier

_PREFIX = "values."


class Compose(Codec):
    """`sparsifier` (whose payload has a "values" part: top-k, rand-k) then `values` on that part.

    The payload keeps the sparsifier's other parts (indices or seed) and the value codec's parts and params under
    "values.<name>", plus the number of kept values as the param "values.numel". Unbiased when both are (rand-k with
    QSGD); the generator drives the sparsifier first, then the value codec.
    """

    def __init__(self, sparsifier: Sparsifier, values: Codec) -> None:
        self.sparsifier, self.values = sparsifier, values
        self.name = f"{sparsifier.name}+{values.name}"
        self.lossless = sparsifier.lossless and values.lossless
        self.unbiased = sparsifier.unbiased and values.unbiased

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Sparsify, then encode the kept values."""
        outer, state = self.sparsifier.encode(x, state, generator)
        if "values" not in outer.parts:
            raise ValueError(f"codec {self.sparsifier.name!r} sends no 'values' part to compose with")
        kept = outer.parts["values"]
        inner, state = self.values.encode(kept, state, generator)
        parts = {key: part for key, part in outer.parts.items() if key != "values"}
        parts.update({_PREFIX + key: part for key, part in inner.parts.items()})
        params = {**outer.params, **{_PREFIX + key: v for key, v in inner.params.items()}}
        params["values.numel"] = float(kept.numel())
        return Payload(self.name, outer.shape, outer.dtype, params, parts), state

    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """Decode the values, then place them."""
        expect(payload, self.name)
        inner = Payload(self.values.name, (int(payload.params["values.numel"]),), payload.dtype,
                        _with_prefix(payload.params, "values.numel"), _with_prefix(payload.parts))
        kept, state = self.values.decode(inner, state)
        outer_parts = {key: part for key, part in payload.parts.items() if not key.startswith(_PREFIX)}
        outer_params = {key: v for key, v in payload.params.items() if not key.startswith(_PREFIX)}
        outer_parts["values"] = kept
        outer = Payload(self.sparsifier.name, payload.shape, payload.dtype, outer_params, outer_parts)
        return self.sparsifier.decode(outer, state)

    def payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """The sparsifier's parts, with its kept values (of `dtype`) replaced by the value codec's parts for them."""
        kept = self.sparsifier.count(numel)
        return (self.sparsifier.payload_nbytes(numel, dtype) - kept * dtype.itemsize
                + self.values.payload_nbytes(kept, dtype))


def _with_prefix(entries: dict, skip: str = "") -> dict:
    """The entries under "values.", with the prefix removed."""
    return {key[len(_PREFIX):]: v for key, v in entries.items() if key.startswith(_PREFIX) and key != skip}
