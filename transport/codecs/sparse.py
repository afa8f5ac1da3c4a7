"""Sparsifiers: top-k (the k largest magnitudes, biased) and rand-k (k uniform coordinates scaled by n/k, unbiased).

Both send a "values" part in the input's dtype, which `Compose` hands to a value codec (e.g. "topk+int8").
"""

from __future__ import annotations

import torch
from torch import Tensor

from transport.codecs.base import Codec, Payload, State
from transport.codecs.common import (
    check_count, check_indices, count_from, draw_seed, expect, flat_input, index_dtype, length, require,
)

_SAMPLE = 65536  # entries looked at to guess the top-k threshold


def largest_magnitudes(x: Tensor, k: int) -> Tensor:
    """Ascending int64 indices of exactly k entries of largest |x_i| (among ties at the k-th magnitude, any).

    Large vectors: a strided sample of |x| gives a threshold admitting about 2k candidates, then torch.topk runs on the
    candidates only (10M entries, top 1 %: 43 ms, against 229 ms for torch.topk and 180 ms for torch.kthvalue on
    all of |x|; benchmarks/bench_codecs.py). If fewer than k entries pass the threshold, it falls back to
    torch.topk on everything, so the answer is always exact.
    """
    n = x.numel()
    if k >= n:
        return torch.arange(n)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    if n <= 4 * _SAMPLE or 8 * k > n:
        return torch.topk(x.abs(), k, sorted=False).indices.sort().values
    sample = x[:: n // _SAMPLE].abs()
    rank = min(sample.numel(), 2 * k * sample.numel() // n + 8)
    threshold = torch.topk(sample, rank, sorted=False).values.min()
    passing = (x >= threshold) | (x <= -threshold)
    if int(passing.count_nonzero()) < k:
        return torch.topk(x.abs(), k, sorted=False).indices.sort().values
    candidates = passing.nonzero().squeeze(1)
    chosen = torch.topk(x[candidates].abs(), k, sorted=False).indices
    return candidates[chosen].sort().values


def uniform_subset(n: int, k: int, generator: torch.Generator) -> Tensor:
    """Ascending int64 indices of a uniformly random k-subset of range(n), drawn from `generator`.

    For k << n: draw a few more than k indices with replacement, deduplicate, and keep a uniform k of them. The
    distinct set is exchangeable (its law is invariant under permutations of range(n)), so the kept k-subset is
    uniform. Costs O(k log k) instead of the O(n) of randperm; for k > n / 4, randperm(n)[:k].
    """
    if k >= n:
        return torch.arange(n)
    if 4 * k > n:
        return torch.randperm(n, generator=generator)[:k].sort().values
    picked = torch.zeros(0, dtype=torch.int64)
    draws = k + k * k // n + 16  # about k^2 / 2n duplicates are expected
    while picked.numel() < k:
        picked = torch.unique(torch.cat([picked, torch.randint(0, n, (draws,), generator=generator)]))
        draws = 2 * (k - picked.numel()) + 16
    if picked.numel() > k:
        picked = picked[torch.randperm(picked.numel(), generator=generator)[:k].sort().values]
    return picked


class Sparsifier(Codec):
    """A codec that keeps `count(n)` of n entries and sends their values, in the input's dtype, as its "values" part."""

    ratio: float | None
    k: int | None

    def count(self, numel: int) -> int:
        """How many entries of a length-`numel` tensor are kept."""
        return count_from(numel, self.ratio, self.k)


def _scatter(n: int, dtype: torch.dtype, indices: Tensor, values: Tensor) -> Tensor:
    out = torch.zeros(n, dtype=dtype)
    out[indices] = values.to(dtype)
    return out


class TopKCodec(Sparsifier):
    """Exactly the k largest magnitudes (k = `k`, or ceil(ratio * n)): ascending indices, int32 (int64 when
    n > 2^31 - 1), and their values in the input's dtype. Wire: k * (4 + 4) bytes for float32. Deterministic, biased.
    """

    name = "topk"

    def __init__(self, ratio: float | None = None, k: int | None = None) -> None:
        self.ratio, self.k = check_count(ratio, k)

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Keep the k largest |x_i|."""
        x = flat_input(x)
        indices = largest_magnitudes(x, self.count(x.numel()))
        parts = {"indices": indices.to(index_dtype(x.numel())), "values": x[indices]}
        return Payload(self.name, tuple(x.shape), x.dtype, {}, parts), state

    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """Zeros except at the sent indices."""
        expect(payload, self.name)
        n, indices, values = length(payload), payload.parts["indices"], payload.parts["values"]
        check_indices(indices, values, n)
        return _scatter(n, payload.dtype, indices, values), state

    def payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """An index and a value of `dtype` per kept entry."""
        return self.count(numel) * (index_dtype(numel).itemsize + dtype.itemsize)


class RandKCodec(Sparsifier):
    """k uniformly random coordinates without replacement (k = `k`, or ceil(ratio * n)), decoded as their values
    times n / k: unbiased, E[x_hat] = x, per-entry variance x_i^2 (n / k - 1).

    By default only a 64-bit seed travels (drawn from the caller's generator); the receiver regenerates the same
    indices from it with torch's CPU generator, so both ends need the same torch random algorithms. Wire: 8 + 4k
    bytes for float32. With indices=True the int32 indices travel instead: 4k + 4k bytes, no such requirement.
    """

    name = "randk"
    unbiased = True

    def __init__(self, ratio: float | None = None, k: int | None = None, indices: bool = False) -> None:
        self.ratio, self.k = check_count(ratio, k)
        self.send_indices = bool(indices)

    def encode(self, x: Tensor, state: State, generator: torch.Generator | None = None) -> tuple[Payload, State]:
        """Pick k coordinates at random and send their (unscaled) values."""
        x = flat_input(x)
        seed = draw_seed(generator)
        k = self.count(x.numel())
        indices = uniform_subset(x.numel(), k, torch.Generator().manual_seed(seed))
        where = {"indices": indices.to(index_dtype(x.numel()))} if self.send_indices else {"seed": torch.tensor([seed])}
        return Payload(self.name, tuple(x.shape), x.dtype, {}, {**where, "values": x[indices]}), state

    def decode(self, payload: Payload, state: State) -> tuple[Tensor, State]:
        """Zeros except at the chosen coordinates, which get value * n / k."""
        expect(payload, self.name)
        n, values = length(payload), payload.parts["values"]
        if "indices" in payload.parts:
            indices = payload.parts["indices"]
        else:
            seed = payload.parts["seed"]
            require(seed.numel() == 1 and seed.dtype == torch.int64 and values.numel() <= n, "malformed rand-k payload")
            indices = uniform_subset(n, values.numel(), torch.Generator().manual_seed(int(seed[0])))
        check_indices(indices, values, n)
        scale = n / values.numel() if values.numel() else 0.0
        return _scatter(n, payload.dtype, indices, values.to(payload.dtype) * scale), state

    def payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """A value of `dtype` per kept entry, plus an index per kept entry or one int64 seed."""
        k = self.count(numel)
        where = k * index_dtype(numel).itemsize if self.send_indices else torch.int64.itemsize
        return where + k * dtype.itemsize
