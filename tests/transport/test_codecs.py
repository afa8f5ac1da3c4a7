"""Codecs: lossless and cast round trips, exact top-k, uniform rand-k, unbiasedness, wire sizes, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.codecs import Codec, make_codec
from transport.codecs.sparse import largest_magnitudes, uniform_subset

WIRE_DTYPES = {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
               torch.int8, torch.uint8}
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
FLOAT64 = st.floats(allow_nan=True, allow_infinity=True)
TIES = st.sampled_from([0.0, 1.0, -1.0, 2.5, -2.5])  # repeated magnitudes, to exercise ties


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def round_trip(codec: Codec, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    payload, _ = codec.encode(x, {}, seeded(seed))
    return codec.decode(payload, {})[0]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


@settings(max_examples=60, deadline=None)
@given(values=st.lists(FLOAT32, max_size=300))
def test_identity_is_bit_exact_for_float32(values: list[float]) -> None:
    # Prepare
    x = torch.tensor(values, dtype=torch.float32)
    # Execute
    payload, _ = make_codec("identity").encode(x, {})
    decoded = make_codec("identity").decode(payload, {})[0]
    # Assert
    assert decoded.dtype == torch.float32 and torch.equal(bits(decoded), bits(x))
    assert payload.nbytes() == 4 * len(values)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(FLOAT64, max_size=300))
def test_identity_sends_float64_as_float64(values: list[float]) -> None:
    x = torch.tensor(values, dtype=torch.float64)
    payload, _ = make_codec("identity").encode(x, {})
    decoded = make_codec("identity").decode(payload, {})[0]
    assert decoded.dtype == torch.float64 and torch.equal(bits(decoded), bits(x))
    assert payload.nbytes() == 8 * len(values)


@pytest.mark.parametrize("spec, cast", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
@settings(max_examples=40, deadline=None)
@given(values=st.lists(FLOAT32, max_size=200), wide=st.booleans())
def test_half_precision_codecs_equal_the_plain_casts(
    spec: str, cast: torch.dtype, values: list[float], wide: bool
) -> None:
    # Prepare: float32 or float64 input
    x = torch.tensor(values, dtype=torch.float64 if wide else torch.float32)
    # Execute
    decoded = round_trip(make_codec(spec), x)
    # Assert: the same bits as casting down and back up
    assert decoded.dtype == x.dtype and torch.equal(bits(decoded), bits(x.to(cast).to(x.dtype)))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), values=st.lists(st.one_of(TIES, st.floats(-1e6, 1e6, width=32)), min_size=1, max_size=300))
def test_topk_keeps_exactly_the_k_largest_magnitudes(data: st.DataObject, values: list[float]) -> None:
    # Prepare
    x = torch.tensor(values)
    k = data.draw(st.integers(0, len(values) + 2), label="k")
    codec = make_codec(f"topk:k={k}")
    # Execute
    payload, _ = codec.encode(x, {})
    decoded = codec.decode(payload, {})[0]
    # Assert: k distinct ascending indices, their values, and nothing dropped is larger than anything kept
    indices = payload.parts["indices"].long()
    kept = torch.zeros(len(values), dtype=torch.bool)
    kept[indices] = True
    assert len(indices) == min(k, len(values)) and bool((indices.diff() > 0).all())
    assert torch.equal(payload.parts["values"], x[indices])
    if 0 < len(indices) < len(values):
        assert x[kept].abs().min() >= x[~kept].abs().max()
    assert torch.equal(decoded, torch.where(kept, x, torch.zeros_like(x)))


@pytest.mark.parametrize("k", [1, 100, 5000, 30000])
def test_topk_on_large_vectors_matches_torch_topk(k: int) -> None:
    # Prepare: beyond the small-vector path; x[::4] large so the sampled threshold admits too few (the fallback)
    n = 300_001
    noise = torch.randn(n, generator=seeded(3))
    gridded = noise.clone()
    gridded[::4] = 10 + torch.arange(len(gridded[::4]), dtype=torch.float32)
    for x in (noise, gridded):
        # Execute
        chosen = largest_magnitudes(x, k)
        # Assert: the same magnitudes as torch.topk, distinct and ascending indices
        expected = torch.topk(x.abs(), k).values
        assert torch.equal(x[chosen].abs().sort(descending=True).values, expected)
        assert bool((chosen.diff() > 0).all())


@pytest.mark.parametrize("n, k", [(20, 7), (100, 10), (10_000, 30)])
def test_uniform_subset_draws_each_index_equally_often(n: int, k: int) -> None:
    # Prepare
    draws = 3000
    counts = torch.zeros(n)
    # Execute
    for seed in range(draws):
        subset = uniform_subset(n, k, seeded(seed))
        assert len(subset) == k and bool((subset.diff() > 0).all()) and 0 <= subset[0] and subset[-1] < n
        counts[subset] += 1
    # Assert: each count is Binomial(draws, k/n); all within 5 standard deviations (and their total is exact)
    p = k / n
    assert float((counts - draws * p).abs().max()) < 5 * math.sqrt(draws * p * (1 - p)) + 1
    assert counts.sum() == draws * k


def test_randk_seed_and_explicit_indices_decode_alike() -> None:
    x = torch.randn(1000, generator=seeded(1))
    by_seed = round_trip(make_codec("randk:k=37"), x, 5)
    by_indices = round_trip(make_codec("randk:k=37,indices=true"), x, 5)
    assert torch.equal(by_seed, by_indices)


def mean_and_stderr(codec: Codec, x: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of `draws` decodings (seeds 0..draws-1) and its standard error per coordinate."""
    samples = torch.stack([round_trip(codec, x, seed) for seed in range(draws)])
    return samples.mean(0), samples.std(0) / math.sqrt(draws)


def looks_unbiased(codec: Codec, x: torch.Tensor, draws: int = 2000, z: float = 5.0) -> bool:
    """Every coordinate's mean within z standard errors of x (a deterministic codec must be exact)."""
    mean, stderr = mean_and_stderr(codec, x, draws)
    return bool(((mean - x).abs() <= z * stderr + 1e-6 * float(x.abs().max())).all())


X = torch.tensor([3.0, -1.0, 0.5, 0.0, 2.0, -0.25, 4.0, 1.5, -3.0, 0.75] * 4)


@pytest.mark.parametrize("spec", ["qsgd:levels=3,bucket=16", "qsgd:levels=127,bucket=0", "randk:ratio=0.2",
                                  "randk:ratio=0.05", "randk:ratio=0.2+qsgd:levels=2"])
def test_unbiased_codecs_average_to_the_input(spec: str) -> None:
    # Prepare
    codec = make_codec(spec)
    # Execute
    verdict = looks_unbiased(codec, X)
    # Assert
    assert codec.unbiased and verdict


def test_qsgd_is_unbiased_for_float64_input() -> None:
    assert looks_unbiased(make_codec("qsgd:levels=2,bucket=7"), X.double() / 3)


@pytest.mark.parametrize("spec", ["topk:ratio=0.2", "sign", "topk:ratio=0.2+qsgd:levels=2"])
def test_biased_codecs_fail_the_same_check(spec: str) -> None:
    codec = make_codec(spec)
    assert not codec.unbiased and not looks_unbiased(codec, X, draws=200)


def qsgd_bytes(n: int, bucket: int = 2048, width: int = 1) -> int:
    return width * n + 4 * math.ceil(n / bucket)


def topk_count(n: int, ratio: float) -> int:
    return max(1, math.ceil(ratio * n))


SIZES = {
    "identity": lambda n: 4 * n,
    "fp16": lambda n: 2 * n,
    "bf16": lambda n: 2 * n,
    "qsgd": qsgd_bytes,
    "int8": qsgd_bytes,
    "qsgd:levels=1000,bucket=0": lambda n: qsgd_bytes(n, n, width=2),
    "topk:ratio=0.1": lambda n: topk_count(n, 0.1) * (4 + 4),
    "randk:ratio=0.1": lambda n: 8 + topk_count(n, 0.1) * 4,
    "randk:ratio=0.1,indices=true": lambda n: topk_count(n, 0.1) * (4 + 4),
    "sign": lambda n: math.ceil(n / 8) + 4,
    "topk:ratio=0.1+int8": lambda n: topk_count(n, 0.1) * 4 + qsgd_bytes(topk_count(n, 0.1)),
    "randk:ratio=0.1+fp16": lambda n: 8 + topk_count(n, 0.1) * 2,
    "ef21(topk:ratio=0.1)": lambda n: topk_count(n, 0.1) * (4 + 4),
    "econtrol(topk:ratio=0.1+int8)": lambda n: topk_count(n, 0.1) * 5 + 4 * math.ceil(topk_count(n, 0.1) / 2048),
}


@pytest.mark.parametrize("spec", sorted(SIZES))
@pytest.mark.parametrize("n", [1, 8, 9, 1000, 4097, 30_000])
def test_payload_size_matches_the_formula(spec: str, n: int) -> None:
    x = torch.randn(n, generator=seeded(n))
    payload, _ = make_codec(spec).encode(x, {}, seeded(0))
    assert payload.nbytes() == SIZES[spec](n)


def test_identity_payload_for_float64_is_eight_bytes_a_value() -> None:
    assert make_codec("identity").encode(torch.zeros(10, dtype=torch.float64), {})[0].nbytes() == 80


@pytest.mark.parametrize("spec", sorted(SIZES) + ["ef(sign)", "econtrol:eta=0.01(randk:ratio=0.3+qsgd)"])
def test_same_seed_gives_the_same_bytes(spec: str) -> None:
    # Prepare: three steps of a (possibly stateful) codec, twice from the same seeds
    xs = [torch.randn(5000, generator=seeded(step)) for step in range(3)]

    def run() -> list[dict[str, torch.Tensor]]:
        codec, state, parts = make_codec(spec), {}, []
        for step, x in enumerate(xs):
            payload, state = codec.encode(x, state, seeded(100 + step))
            parts.append(payload.parts)
        return parts

    # Execute
    first, second = run(), run()
    # Assert: identical plain CPU tensors, byte for byte
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype in WIRE_DTYPES and a[key].device.type == "cpu" and a[key].dim() == 1
            assert a[key].dtype == b[key].dtype and torch.equal(a[key].view(torch.uint8), b[key].view(torch.uint8))


@pytest.mark.parametrize("bad", [torch.zeros(2, 3), torch.arange(4), 3.0])
def test_codecs_refuse_anything_but_a_1d_float_tensor(bad) -> None:
    with pytest.raises(ValueError, match="1-D float tensor"):
        make_codec("topk:k=1").encode(bad, {})


def test_decoders_refuse_foreign_and_malformed_payloads() -> None:
    # Prepare
    payload, _ = make_codec("topk:k=2").encode(torch.arange(5.0), {})
    broken = make_codec("topk:k=2").encode(torch.arange(5.0), {})[0]
    broken.parts["indices"] = torch.tensor([1, 9], dtype=torch.int32)
    # Execute / Assert
    with pytest.raises(ValueError, match="payload of codec 'topk' given to codec 'randk'"):
        make_codec("randk:k=2").decode(payload, {})
    with pytest.raises(ValueError, match="out of range"):
        make_codec("topk:k=2").decode(broken, {})
