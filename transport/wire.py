"""Tasks, results, payloads and tensors <-> protobuf header frames plus the raw bytes of their tensor parts.

Encoding gives `(header frame, parts' bytes)` for `framing.to_frames`; decoding takes the header and the parts' bytes
that `framing.read_parts` returns, in `framing.tensor_parts` order. Tensors travel as their exact bytes
(little-endian, C order), so every round trip is bit for bit, bfloat16 included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from transport.codecs.base import Payload
from transport.framing import tensor_parts
from transport.messages import Result, Scalar, Task
from transport.proto import fl_pb2

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_ELEMENTS = 1 << 48  # no tensor that travels has more, even counting its empty dimensions as 1

Encoded = tuple[fl_pb2.Frame, list[memoryview]]


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _NAMES:
        raise ValueError(f"dtype {dtype} cannot travel; allowed: {', '.join(DTYPES)}")
    return _NAMES[dtype]


def dtype_from_name(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def tensor_part(name: str, tensor: Tensor) -> tuple[fl_pb2.TensorPart, memoryview]:
    """The part header (byte count only) and a zero-copy view of the tensor's bytes."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    part = fl_pb2.TensorPart(name=name, dtype=dtype_name(tensor.dtype), shape=tensor.shape)
    part.num_bytes = flat.numel() * flat.element_size()
    return part, memoryview(flat.view(torch.uint8).numpy())


def part_tensor(part: fl_pb2.TensorPart, data: bytearray) -> Tensor:
    """The tensor a part describes, viewing `data` without a copy; ValueError if the sizes disagree."""
    dtype, shape = dtype_from_name(part.dtype), tuple(part.shape)
    if any(size < 0 for size in shape):
        raise ValueError(f"tensor part {part.name!r} has a negative dimension: {shape}")
    if math.prod(max(size, 1) for size in shape) > MAX_ELEMENTS:  # torch's size and stride arithmetic would overflow
        raise ValueError(f"tensor part {part.name!r} has an impossible shape: {shape}")
    needed = math.prod(shape) * dtype.itemsize
    if len(data) != needed:
        raise ValueError(f"tensor part {part.name!r}: {len(data)} bytes, but shape {shape} {part.dtype} needs {needed}")
    if needed == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(shape)


def payload_message(payload: Payload) -> tuple[fl_pb2.EncodedTensor, list[memoryview]]:
    message = fl_pb2.EncodedTensor(
        codec=payload.codec, dtype=dtype_name(payload.dtype), shape=payload.shape, params=payload.params
    )
    return message, _add_parts(message.parts, payload.parts)


def payload_from_message(message: fl_pb2.EncodedTensor, data: Sequence[bytearray]) -> Payload:
    if any(size < 0 for size in message.shape):
        raise ValueError(f"payload shape has a negative dimension: {tuple(message.shape)}")
    return Payload(
        codec=message.codec, shape=tuple(message.shape), dtype=dtype_from_name(message.dtype),
        params=dict(message.params), parts=_tensors(message.parts, data),
    )


def task_frame(task: Task, task_id: int) -> Encoded:
    message = fl_pb2.Task(
        kind=task.kind, version=task.version, task_id=task_id, client_id=task.client_id, seed=task.seed,
        config={key: _scalar(key, value) for key, value in task.config.items()},
    )
    data = _add_parts(message.tensors, task.tensors) + _add_parts(message.state, task.state)
    return fl_pb2.Frame(task=message), data


def task_from_frame(frame: fl_pb2.Frame, data: Sequence[bytearray]) -> tuple[int, Task]:
    """(task id, task) from a task header and its parts' bytes."""
    message, data = frame.task, _check_count(frame, data)
    tensors = _tensors(message.tensors, data[: len(message.tensors)])
    task = Task(
        kind=message.kind, version=message.version, client_id=message.client_id, seed=message.seed,
        config={key: _from_scalar(key, value) for key, value in message.config.items()},
        tensors=tensors, state=_tensors(message.state, data[len(message.tensors) :]),
    )
    return message.task_id, task


def result_frame(result: Result, task_id: int) -> Encoded:
    """The header and parts of a result whose `update` is an encoded Payload (or None)."""
    message = fl_pb2.Result(
        kind=result.kind, version=result.version, task_id=task_id, client_id=result.client_id,
        num_samples=result.num_samples, metrics=result.metrics,
    )
    data: list[memoryview] = []
    if result.update is not None:
        if not isinstance(result.update, Payload):
            raise ValueError(f"a result's update travels as an encoded Payload, got {type(result.update).__name__}")
        update, data = payload_message(result.update)
        message.update.CopyFrom(update)
    data += _add_parts(message.tensors, result.tensors) + _add_parts(message.state, result.state)
    return fl_pb2.Frame(result=message), data


def result_from_frame(frame: fl_pb2.Frame, data: Sequence[bytearray]) -> tuple[int, Result]:
    """(task id, result) with `result.update` still an encoded Payload (or None)."""
    message, data = frame.result, _check_count(frame, data)
    num_update = len(message.update.parts)
    num_tensors = num_update + len(message.tensors)
    update = payload_from_message(message.update, data[:num_update]) if message.HasField("update") else None
    result = Result(
        kind=message.kind, version=message.version, client_id=message.client_id, num_samples=message.num_samples,
        metrics=dict(message.metrics), update=update, tensors=_tensors(message.tensors, data[num_update:num_tensors]),
        state=_tensors(message.state, data[num_tensors:]),
    )
    return message.task_id, result


class ParamsMessage(NamedTuple):
    """The global parameters of `version`: whole (base_version 0, with the downlink decoder's state) or the change
    from `base_version`."""

    version: int
    payload: Payload
    base_version: int = 0
    state: Mapping[str, Tensor] = {}


def params_frame(message: ParamsMessage) -> Encoded:
    tensor, data = payload_message(message.payload)
    frame = fl_pb2.Frame(params=fl_pb2.Params(version=message.version, tensor=tensor, base_version=message.base_version))
    return frame, data + _add_parts(frame.params.state, message.state)


def params_from_frame(frame: fl_pb2.Frame, data: Sequence[bytearray]) -> ParamsMessage:
    """The params message of a header and its parts' bytes."""
    data, params = _check_count(frame, data), frame.params
    num_payload = len(params.tensor.parts)
    payload = payload_from_message(params.tensor, data[:num_payload])
    return ParamsMessage(params.version, payload, params.base_version, _tensors(params.state, data[num_payload:]))


def _add_parts(parts, tensors: dict[str, Tensor]) -> list[memoryview]:
    """Append one part header per tensor to the repeated field `parts`; return the tensors' bytes."""
    data = []
    for name, tensor in tensors.items():
        part, view = tensor_part(name, tensor)
        parts.append(part)
        data.append(view)
    return data


def _tensors(parts: Sequence[fl_pb2.TensorPart], data: Sequence[bytearray]) -> dict[str, Tensor]:
    tensors = {part.name: part_tensor(part, buffer) for part, buffer in zip(parts, data, strict=True)}
    if len(tensors) != len(parts):
        raise ValueError(f"duplicate tensor names in {[part.name for part in parts]}")
    return tensors


def _check_count(frame: fl_pb2.Frame, data: Sequence[bytearray]) -> Sequence[bytearray]:
    expected = len(tensor_parts(frame))
    if len(data) != expected:
        raise ValueError(f"the header has {expected} tensor parts but {len(data)} buffers were given")
    return data


def _scalar(key: str, value: Scalar) -> fl_pb2.Scalar:
    if isinstance(value, bool):
        return fl_pb2.Scalar(bool_value=value)
    if isinstance(value, int):
        return fl_pb2.Scalar(int_value=value)
    if isinstance(value, float):
        return fl_pb2.Scalar(float_value=value)
    if isinstance(value, str):
        return fl_pb2.Scalar(string_value=value)
    raise ValueError(f"config[{key!r}] = {value!r}: only bool, int, float and str travel")


def _from_scalar(key: str, value: fl_pb2.Scalar) -> Scalar:
    kind = value.WhichOneof("value")
    if kind is None:
        raise ValueError(f"config[{key!r}] has no value")
    return getattr(value, kind)
