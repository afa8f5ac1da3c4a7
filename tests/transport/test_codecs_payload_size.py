"""Payload sizes: every codec's payload_nbytes(n, dtype) is exactly what encode sends, whatever the values and state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.codecs import Codec, make_codec

SPECS = [
    "identity", "fp16", "bf16", "qsgd", "qsgd:levels=300,bucket=5", "qsgd:bucket=0", "int8", "int8:bucket=3",
    "topk:ratio=0.01", "topk:k=5", "randk:ratio=0.3", "randk:k=3,indices=true", "sign",
    "topk:ratio=0.01+fp16", "topk:k=5+int8", "randk:ratio=0.1+qsgd:bucket=4", "randk:k=2,indices=true+sign",
    "ef(sign)", "ef(topk:k=5+bf16)", "ef21(topk:ratio=0.1)", "ef21(qsgd:bucket=3)", "econtrol:eta=0.5(randk:k=3+int8)",
]
SIZES = (1, 2, 7, 1000, 4097)
# zeros, ordinary and huge values, infinities and NaNs (float32's largest finite magnitude included)
PATTERNS = st.lists(st.one_of(st.just(0.0), st.floats(), st.sampled_from([3e38, -3e38])), min_size=1, max_size=64)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def vector(pattern: list[float], dtype: torch.dtype) -> torch.Tensor:
    """`pattern` repeated to the largest size, in `dtype` (huge float64 values become infinities in float32)."""
    return torch.from_numpy(np.resize(np.array(pattern), max(SIZES))).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=25, deadline=None)
@given(first=PATTERNS, second=PATTERNS)
def test_payload_nbytes_matches_encode_before_and_after_the_state_is_updated(
        spec: str, dtype: torch.dtype, first: list[float], second: list[float]) -> None:
    # Prepare: two inputs, so that the second encode starts from the state the first one left
    codec = make_codec(spec)
    x, y = vector(first, dtype), vector(second, dtype)
    for numel in SIZES:
        # Execute
        sent, state = codec.encode(x[:numel], {}, seeded(0))
        sent_again, _ = codec.encode(y[:numel], state, seeded(1))
        # Assert
        assert codec.payload_nbytes(numel, dtype) == sent.nbytes() == sent_again.nbytes(), numel


@pytest.mark.parametrize("spec, numel, dtype, expected", [
    ("identity", 10, torch.float64, 10 * 8),
    ("bf16", 10, torch.float32, 10 * 2),
    ("qsgd:levels=300,bucket=4", 10, torch.float32, 10 * 2 + 3 * 4),  # int16 levels, 3 float32 norms
    ("sign", 10, torch.float32, 2 + 4),  # 10 bits in 2 bytes, one float32 scale
    ("topk:ratio=0.01", 1000, torch.float64, 10 * (4 + 8)),  # int32 indices, float64 values
    ("topk:k=10", 2**31, torch.float32, 10 * (8 + 4)),  # int64 indices beyond 2^31 - 1 entries, without encoding
    ("randk:k=10", 1000, torch.float32, 8 + 10 * 4),  # an int64 seed instead of indices
    ("ef21(topk:ratio=0.01+int8)", 1000, torch.float32, 10 * 4 + 10 * 1 + 4),  # indices, int8 levels, one norm
])
def test_payload_nbytes_follows_each_codecs_layout(spec: str, numel: int, dtype: torch.dtype, expected: int) -> None:
    assert make_codec(spec).payload_nbytes(numel, dtype) == expected


def test_payload_nbytes_is_abstract() -> None:
    assert "payload_nbytes" in Codec.__abstractmethods__
