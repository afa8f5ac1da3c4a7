"""Wire conversions: tasks, results, params and every allowed dtype round-trip bit for bit through frames."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transport import framing, wire
from transport.codecs.base import Payload
from transport.messages import Result, Task

INT64 = st.integers(-(2**63), 2**63 - 1)
NAMES = st.text(min_size=1, max_size=8)
SHAPES = st.lists(st.integers(0, 4), max_size=3).map(tuple)
CHUNK_SIZES = st.integers(1, 97)


@st.composite
def tensors(draw) -> torch.Tensor:
    """Any allowed dtype and shape; float bits are arbitrary (NaN payloads and signed zeros included)."""
    dtype = wire.DTYPES[draw(st.sampled_from(sorted(wire.DTYPES)))]
    shape = draw(SHAPES)
    numel = 1 if not shape else int(torch.Size(shape).numel())
    if dtype == torch.bool:
        return torch.tensor(draw(st.lists(st.booleans(), min_size=numel, max_size=numel))).reshape(shape)
    raw = draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize))
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)


def tensor_dicts(max_size: int = 3):
    return st.dictionaries(NAMES, tensors(), max_size=max_size)


payloads = st.builds(
    Payload, codec=st.text(max_size=12), shape=SHAPES,
    dtype=st.sampled_from(list(wire.DTYPES.values())),
    params=st.dictionaries(NAMES, st.floats(allow_nan=False)), parts=tensor_dicts(),
)
scalars = st.one_of(st.booleans(), INT64, st.floats(allow_nan=False), st.text(max_size=10))
tasks = st.builds(
    Task, kind=st.sampled_from(["train", "evaluate"]), version=INT64, client_id=INT64, seed=INT64,
    config=st.dictionaries(NAMES, scalars, max_size=4), tensors=tensor_dicts(), state=tensor_dicts(),
)
results = st.builds(
    Result, kind=st.sampled_from(["train", "evaluate"]), version=INT64, client_id=INT64, num_samples=INT64,
    metrics=st.dictionaries(NAMES, st.floats(allow_nan=False)), update=st.none() | payloads,
    tensors=tensor_dicts(), state=tensor_dicts(),
)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same names, dtypes, shapes and bytes."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
        for k in a
    )


def same_payload(a: Payload | None, b: Payload | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.codec, a.shape, a.dtype, a.params) == (b.codec, b.shape, b.dtype, b.params) and same_tensors(
        a.parts, b.parts)


def through_frames(encoded: wire.Encoded, chunk_size: int) -> tuple[object, list[bytearray]]:
    """Serialize every frame, parse it back, and reassemble: what a receiver sees."""
    frames = [type(f).FromString(f.SerializeToString()) for f in framing.to_frames(*encoded, chunk_size)]
    return framing.from_frames(frames)


@settings(max_examples=60, deadline=None)
@given(task=tasks, task_id=INT64, chunk_size=CHUNK_SIZES)
def test_task_round_trip_is_exact(task: Task, task_id: int, chunk_size: int) -> None:
    got_id, got = wire.task_from_frame(*through_frames(wire.task_frame(task, task_id), chunk_size))

    assert got_id == task_id
    assert (got.kind, got.version, got.client_id, got.seed) == (task.kind, task.version, task.client_id, task.seed)
    assert got.config == task.config and [type(v) for v in got.config.values()] == [
        type(task.config[k]) for k in got.config]
    assert same_tensors(got.tensors, task.tensors) and same_tensors(got.state, task.state)


@settings(max_examples=60, deadline=None)
@given(result=results, task_id=INT64, chunk_size=CHUNK_SIZES)
def test_result_round_trip_is_exact(result: Result, task_id: int, chunk_size: int) -> None:
    got_id, got = wire.result_from_frame(*through_frames(wire.result_frame(result, task_id), chunk_size))

    assert got_id == task_id
    assert (got.kind, got.version, got.client_id, got.num_samples, got.metrics) == (
        result.kind, result.version, result.client_id, result.num_samples, result.metrics)
    assert same_payload(got.update, result.update)
    assert same_tensors(got.tensors, result.tensors) and same_tensors(got.state, result.state)


@settings(max_examples=40, deadline=None)
@given(payload=payloads, version=INT64, base=INT64, state=tensor_dicts(), chunk_size=CHUNK_SIZES)
def test_params_round_trip_is_exact(payload: Payload, version: int, base: int, state: dict[str, torch.Tensor],
                                    chunk_size: int) -> None:
    sent = wire.ParamsMessage(version, payload, base, state)

    got = wire.params_from_frame(*through_frames(wire.params_frame(sent), chunk_size))

    assert (got.version, got.base_version) == (version, base)
    assert same_payload(got.payload, payload) and same_tensors(got.state, state)


def test_bfloat16_bits_survive() -> None:
    bits = torch.tensor([0x7FC1, -0x8000, 0x0001, 0x3F80, -0x0081], dtype=torch.int16)  # NaN payload, -0, subnormal
    tensor = bits.view(torch.bfloat16)

    got = wire.part_tensor(*_bytes_of(wire.tensor_part("x", tensor)))

    assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), bits)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float8_e4m3fn, torch.uint16, torch.qint8])
def test_other_dtypes_are_refused(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match="cannot travel"):
        wire.dtype_name(dtype)


def test_every_allowed_dtype_name_round_trips() -> None:
    assert all(wire.dtype_from_name(wire.dtype_name(dtype)) == dtype for dtype in wire.DTYPES.values())
    with pytest.raises(ValueError, match="unknown dtype"):
        wire.dtype_from_name("complex64")


def test_a_part_whose_bytes_disagree_with_its_shape_is_refused() -> None:
    part, data = _bytes_of(wire.tensor_part("x", torch.zeros(3)))
    part.shape[:] = [4]

    with pytest.raises(ValueError, match="needs 16"):
        wire.part_tensor(part, data)


def test_config_values_that_cannot_travel_are_refused() -> None:
    task = Task("train", 0, 1, 2, config={"lr": [0.1]})

    with pytest.raises(ValueError, match="lr"):
        wire.task_frame(task, 1)


def test_a_result_update_must_be_encoded() -> None:
    result = Result("train", 0, 1, 2, {}, update=torch.zeros(3))

    with pytest.raises(ValueError, match="Payload"):
        wire.result_frame(result, 1)


def _bytes_of(encoded: tuple) -> tuple:
    part, view = encoded
    return part, bytearray(view)
