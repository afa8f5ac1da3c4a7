"""Large messages as a stream of small frames: one header, then the tensor parts' raw bytes in bounded chunks.

The header frame is a task, result or params message whose tensor parts carry only `num_bytes`; the data frames that
follow carry those parts' bytes back to back, in header order (`tensor_parts`), each at most `chunk_size` bytes. The
receiver checks the announced total against its limit, then appends each chunk to its part's buffer: no protobuf
message grows with the model (protobuf's 2 GB limit does not apply), and memory grows only with data received.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from google.protobuf.message import DecodeError

from transport.proto import fl_pb2

DEFAULT_CHUNK_SIZE = 1 << 20
HEADER_ROOM = 4 << 20  # bytes a frame may need beyond chunk_size: the header of a task or result
HEADER_KINDS = ("task", "result", "params")


def tensor_parts(header: fl_pb2.Frame) -> list[fl_pb2.TensorPart]:
    """The header's tensor parts in stream order (wire.py reads them back in the same order)."""
    kind = header.WhichOneof("body")
    if kind == "task":
        return [*header.task.tensors, *header.task.state]
    if kind == "result":
        return [*header.result.update.parts, *header.result.tensors, *header.result.state]
    if kind == "params":
        return [*header.params.tensor.parts, *header.params.state]
    raise ValueError(f"expected a header frame ({', '.join(HEADER_KINDS)}), got {kind or 'an empty frame'}")


def to_frames(
    header: fl_pb2.Frame, parts_bytes: Sequence[memoryview], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[fl_pb2.Frame]:
    """The header, then data frames of at most `chunk_size` bytes carrying `parts_bytes` (one per streamed part)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    expected = [part.num_bytes for part in tensor_parts(header) if part.WhichOneof("body") == "num_bytes"]
    actual = [view.nbytes for view in parts_bytes]
    if expected != actual:
        raise ValueError(f"the header announces parts of {expected} bytes but {actual} bytes were given")
    yield header
    pending: list[memoryview] = []
    pending_bytes = 0
    for view in parts_bytes:
        view = view.cast("B")
        while view.nbytes:
            piece = view[: chunk_size - pending_bytes]
            view = view[piece.nbytes :]
            pending.append(piece)
            pending_bytes += piece.nbytes
            if pending_bytes == chunk_size:
                yield fl_pb2.Frame(data=b"".join(pending))
                pending, pending_bytes = [], 0
    if pending:
        yield fl_pb2.Frame(data=b"".join(pending))


def parse(raw_frames: Iterable[bytes], sizes: list[int]) -> Iterator[fl_pb2.Frame]:
    """Frames parsed from serialized bytes, appending each one's size to `sizes`."""
    for data in raw_frames:
        sizes.append(len(data))
        try:
            yield fl_pb2.Frame.FromString(data)
        except DecodeError as error:
            raise ValueError(f"undecodable frame: {error}") from error


def read_header(frames: Iterator[fl_pb2.Frame], kinds: Sequence[str] = HEADER_KINDS) -> fl_pb2.Frame:
    """The stream's first frame, which must be one of `kinds` (frame body names, e.g. "result" or "signal")."""
    header = next(frames, None)
    kind = None if header is None else header.WhichOneof("body")
    if kind == "data":
        raise ValueError("data frame before the header frame")
    if kind not in kinds:
        raise ValueError(f"expected a {' or '.join(kinds)} frame first, got {kind or 'nothing'}")
    return header


class PartsReader:
    """Fills a header's tensor parts from data frames fed one at a time; buffers grow only with data received."""

    def __init__(self, header: fl_pb2.Frame, max_bytes: int | None = None) -> None:
        self.parts = tensor_parts(header)
        for part in self.parts:
            if part.WhichOneof("body") is None:
                raise ValueError(f"tensor part {part.name!r} has neither inline bytes nor a byte count")
        self.sizes = [part.num_bytes for part in self.parts if part.WhichOneof("body") == "num_bytes"]
        self.remaining = sum(self.sizes)
        announced = self.remaining + sum(len(part.data) for part in self.parts if part.WhichOneof("body") == "data")
        if max_bytes is not None and announced > max_bytes:
            raise ValueError(f"the header announces {announced} bytes, more than the limit of {max_bytes}")
        self.streamed = [bytearray() for _ in self.sizes]
        self.index = 0

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def feed(self, frame: fl_pb2.Frame) -> None:
        """Append one data frame's bytes; ValueError for any other frame or for bytes beyond the announced total."""
        if frame.WhichOneof("body") != "data":
            raise ValueError(f"expected a data frame after the header, got {frame.WhichOneof('body') or 'nothing'}")
        chunk = memoryview(frame.data)
        if chunk.nbytes > self.remaining:
            raise ValueError(f"data frames carry {chunk.nbytes - self.remaining} bytes more than the header announces")
        self.remaining -= chunk.nbytes
        while chunk.nbytes:
            while len(self.streamed[self.index]) == self.sizes[self.index]:
                self.index += 1
            buffer = self.streamed[self.index]
            take = min(chunk.nbytes, self.sizes[self.index] - len(buffer))
            buffer += chunk[:take]
            chunk = chunk[take:]

    def result(self) -> list[bytearray]:
        """Every part's bytes in header order: inline parts copied, streamed parts as filled."""
        if self.remaining:
            raise ValueError(f"the frame stream ended {self.remaining} bytes short of what the header announces")
        filled = iter(self.streamed)
        return [bytearray(part.data) if part.WhichOneof("body") == "data" else next(filled) for part in self.parts]


def read_parts(
    header: fl_pb2.Frame, frames: Iterable[fl_pb2.Frame], max_bytes: int | None = None
) -> list[bytearray]:
    """Every tensor part's bytes, in header order, reading no frame beyond them (a stream may carry several
    messages); the data frames must fill them exactly."""
    reader = PartsReader(header, max_bytes)
    frames = iter(frames)
    while not reader.done and (frame := next(frames, None)) is not None:
        reader.feed(frame)
    return reader.result()


def from_frames(
    frames: Iterable[fl_pb2.Frame], kinds: Sequence[str] = HEADER_KINDS, max_bytes: int | None = None
) -> tuple[fl_pb2.Frame, list[bytearray]]:
    """(header, parts' bytes) of a whole frame stream whose header is one of `kinds`."""
    frames = iter(frames)
    header = read_header(frames, kinds)
    parts = read_parts(header, frames, max_bytes)
    extra = next(frames, None)
    if extra is not None:
        raise surplus(extra)
    return header, parts


def surplus(frame: fl_pb2.Frame) -> ValueError:
    """The error for a frame found after a message's data."""
    kind = frame.WhichOneof("body")
    if kind != "data":
        return ValueError(f"a {kind or 'empty'} frame follows the message")
    return ValueError(f"data frames carry {len(frame.data)} bytes more than the header announces")
