"""Framing: a large update travels in bounded frames and comes back exact; malformed streams are refused."""

from __future__ import annotations

import pytest
import torch

from transport import framing, wire
from transport.codecs.base import Payload
from transport.messages import Result
from transport.proto import fl_pb2

CHUNK = 64 << 10
FRAME_OVERHEAD = 8  # oneof tag and length of a data frame


def small_result_frames(chunk_size: int = 4) -> list[fl_pb2.Frame]:
    """A result with parts of 12, 8 and 2 bytes: the data frames carry 22 bytes."""
    update = Payload("raw", (3,), torch.float32, parts={"values": torch.tensor([1.0, 2.0, 3.0])})
    result = Result("train", 0, 7, 5, {}, update=update, tensors={"n": torch.tensor([4, 5], dtype=torch.int32)},
                    state={"s": torch.tensor([1], dtype=torch.int16)})
    return list(framing.to_frames(*wire.result_frame(result, 1), chunk_size))


def test_a_25_mb_update_round_trips_exactly_in_bounded_frames() -> None:
    values = torch.randn(6_500_000, generator=torch.Generator().manual_seed(0))
    payload = Payload("raw", tuple(values.shape), torch.float32, {"scale": 0.5}, {"values": values})

    frames = list(framing.to_frames(*wire.params_frame(wire.ParamsMessage(3, payload)), CHUNK))
    version, got, _, _ = wire.params_from_frame(*framing.from_frames(frames))

    assert max(frame.ByteSize() for frame in frames) <= CHUNK + FRAME_OVERHEAD
    assert len(frames) == 1 + -(-values.numel() * 4 // CHUNK)
    assert version == 3 and got.params == {"scale": 0.5} and torch.equal(got.parts["values"], values)


def test_data_frames_pack_parts_back_to_back() -> None:
    frames = small_result_frames(chunk_size=5)

    assert [len(frame.data) for frame in frames[1:]] == [5, 5, 5, 5, 2]
    header, parts = framing.from_frames(frames)
    assert [len(part) for part in parts] == [12, 8, 2]


def test_inline_parts_need_no_data_frames() -> None:
    header, data = wire.params_frame(wire.ParamsMessage(0, Payload("raw", (2,), torch.int8, parts={"values": torch.tensor([1, 2])})))
    header.params.tensor.parts[0].data = bytes(data[0])  # replaces the byte count

    got = wire.params_from_frame(*framing.from_frames([header])).payload

    assert got.parts["values"].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda frames: [], "got nothing"),
        (lambda frames: frames[1:], "data frame before the header"),
        (lambda frames: [frames[0], frames[0]] + frames[1:], "expected a data frame"),
        (lambda frames: frames[:-1], "2 bytes short"),
        (lambda frames: frames + [fl_pb2.Frame(data=b"xyz")], "3 bytes more"),
        (lambda frames: frames[:2] + [fl_pb2.Frame(signal=fl_pb2.DONE)] + frames[2:], "expected a data frame"),
        (lambda frames: [fl_pb2.Frame(task=fl_pb2.Task())] + frames[1:], "4 bytes more"),
        (lambda frames: [fl_pb2.Frame()] + frames[1:], "got nothing"),
    ],
)
def test_malformed_streams_are_refused(mangle, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        framing.from_frames(mangle(small_result_frames()), kinds=("result", "task"))


def test_a_header_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="expected a params frame first, got result"):
        framing.from_frames(small_result_frames(), kinds=("params",))


def test_a_part_without_bytes_or_count_is_refused() -> None:
    frames = small_result_frames()
    frames[0].result.state[0].ClearField("num_bytes")

    with pytest.raises(ValueError, match="'s' has neither inline bytes nor a byte count"):
        framing.from_frames(frames)


def test_a_header_announcing_too_much_is_refused_before_allocating() -> None:
    frames = small_result_frames()
    frames[0].result.update.parts[0].num_bytes = 1 << 50

    with pytest.raises(ValueError, match="more than the limit"):
        framing.from_frames(frames, max_bytes=1 << 30)


def test_to_frames_checks_the_parts_against_the_header() -> None:
    header, data = wire.params_frame(wire.ParamsMessage(0, Payload("raw", (2,), torch.int8, parts={"values": torch.tensor([1, 2])})))

    with pytest.raises(ValueError, match="announces parts of"):
        list(framing.to_frames(header, data + data, CHUNK))


def test_undecodable_bytes_are_refused() -> None:
    sizes: list[int] = []

    with pytest.raises(ValueError, match="undecodable"):
        list(framing.parse([b"\xff\xff\xff"], sizes))
