"""The gossip server's boundary: an inbox takes only the steps a round has and holds a bounded number of messages per
sender; on grpc.aio, idle streams cost no thread and are cancelled after `idle_seconds`, a sender's calls have a
limit, and malformed Send streams are refused with a status while honest messages still arrive."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import torch

from transport import framing, wire
from transport.auth import CLIENT_KEY, TOKEN_KEY, client_token
from transport.board import Refused
from transport.codecs.cast import IdentityCodec
from transport.gossip_peer import HELD_PER_SENDER, STEP_KEY, TO_KEY, GossipClient, GossipServer, Inbox
from transport.grpc_common import ServerLimits
from transport.proto import fl_pb2

SIZE = 10
SECRET = b"gossip-server-test"
SEND = "/fl.Gossip/Send"
Code = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]


def node_zero(**options) -> Inbox:
    """Node 0's inbox: in-neighbours 1 and 7, messages of SIZE float32, rounds of two gossip steps."""
    return Inbox(0, lambda round, step: [1, 7], SIZE, torch.float32, steps=lambda round: 2, **options)


def frames(message: torch.Tensor, round: int = 1) -> list[fl_pb2.Frame]:
    """A message's Send stream: its params header, then data frames of 16 bytes."""
    header, parts = wire.params_frame(wire.ParamsMessage(round, IdentityCodec().encode(message, {})[0]))
    return list(framing.to_frames(header, parts, 16))


def serialized(stream: list[fl_pb2.Frame]) -> list[bytes]:
    return [frame.SerializeToString() for frame in stream]


def metadata(sender: int, step: int = 0, secret: bytes | None = None) -> Metadata:
    token = ((TOKEN_KEY, client_token(secret, sender)),) if secret is not None else ()
    return ((CLIENT_KEY, str(sender)), (TO_KEY, "0"), (STEP_KEY, str(step))) + token


class Served:
    """An inbox behind a GossipServer on 127.0.0.1, and a raw channel to it (requests and replies as bytes)."""

    def __init__(self, inbox: Inbox, **options) -> None:
        self.inbox, self.server = inbox, GossipServer(inbox, "127.0.0.1:0", **options)
        self.address = f"127.0.0.1:{self.server.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.send = self.channel.stream_unary(SEND)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


@pytest.fixture
def served() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []
    yield lambda inbox, **options: started.append(Served(inbox, **options)) or started[-1]
    for one in started:
        one.close()


def held_stream(release: threading.Event, first: list[bytes]) -> Iterator[bytes]:
    """`first`, then nothing until `release` is set: a stream held open."""
    yield from first
    release.wait(30)


def code_of(call: grpc.Future, timeout: float = 10) -> Code:
    try:
        call.result(timeout=timeout)
    except grpc.RpcError as error:
        return error.code()
    return Code.OK


def test_steps_the_round_does_not_have_are_refused_and_never_held() -> None:
    inbox = node_zero()

    for step in (2, 7, 2**62):
        with pytest.raises(Refused) as refusal:
            inbox.put(1, step, 1, torch.zeros(SIZE))
        assert refusal.value.code == Code.INVALID_ARGUMENT
        assert f"no step {step}" in str(refusal.value)
    inbox.put(1, 1, 1, torch.zeros(SIZE))  # step 1 of 2 is welcome
    assert inbox._messages.keys() == {(1, 1, 1)}


def test_steps_7_and_2_to_the_62_are_refused_over_grpc(served) -> None:
    node = served(node_zero())

    codes = [code_of(node.send.future(iter(serialized(frames(torch.zeros(SIZE)))), metadata=metadata(1, step)))
             for step in (7, 2**62)]

    assert codes == [Code.INVALID_ARGUMENT] * 2
    assert not node.inbox._messages


def test_an_inbox_holds_at_most_a_bounded_number_of_messages_per_sender() -> None:
    # Prepare: an inbox that would take many rounds ahead, filled with one sender's messages
    inbox = node_zero(ahead=100)
    for round in range(1, HELD_PER_SENDER + 1):
        inbox.put(round, 0, 1, torch.zeros(SIZE))
    # Execute, Assert: one more is refused (the sender retries later), another sender's is not
    with pytest.raises(Refused) as refusal:
        inbox.put(HELD_PER_SENDER + 1, 0, 1, torch.zeros(SIZE))
    assert refusal.value.code == Code.RESOURCE_EXHAUSTED
    inbox.put(1, 0, 7, torch.zeros(SIZE))
    inbox.wait_for(1, 0, [1, 7], timeout=1)  # mixing round 1 frees a place
    inbox.put(HELD_PER_SENDER + 1, 0, 1, torch.zeros(SIZE))


def test_a_stalled_stream_is_cancelled_after_idle_seconds(served) -> None:
    node = served(node_zero(), limits=ServerLimits(idle_seconds=0.3))
    release = threading.Event()
    try:
        silent = node.send.future(held_stream(release, []), metadata=metadata(1))
        header_only = serialized(frames(torch.zeros(SIZE)))[:1]
        stalled = node.send.future(held_stream(release, header_only), metadata=metadata(7))
        assert code_of(silent) == code_of(stalled) == Code.DEADLINE_EXCEEDED
    finally:
        release.set()


def test_a_sender_with_its_fill_of_calls_is_refused_and_others_get_through(served) -> None:
    # Prepare: node 1 (proven by its token) holds its two calls open
    node = served(node_zero(), auth_secret=SECRET, limits=ServerLimits(calls_per_client=2))
    release = threading.Event()
    held = [node.send.future(held_stream(release, []), metadata=metadata(1, secret=SECRET)) for _ in range(2)]
    message = serialized(frames(torch.ones(SIZE)))
    try:
        time.sleep(0.3)
        # Execute
        third = code_of(node.send.future(iter(message), metadata=metadata(1, secret=SECRET)))
        other = code_of(node.send.future(iter(message), metadata=metadata(7, secret=SECRET)))
        # Assert
        assert (third, other) == (Code.RESOURCE_EXHAUSTED, Code.OK)
        assert not any(call.done() for call in held)
    finally:
        release.set()
    assert torch.equal(node.inbox.wait_for(1, 0, [7], timeout=1)[7], torch.ones(SIZE))


def test_sixty_four_idle_streams_do_not_delay_an_honest_message(served) -> None:
    # Prepare: 64 streams in node 1's name that send nothing (more than the old server's 8 threads)
    node = served(node_zero())
    release = threading.Event()
    idle = [node.send.future(held_stream(release, []), metadata=metadata(1)) for _ in range(64)]
    client = GossipClient(node.address, timeout_seconds=5)
    try:
        time.sleep(0.3)
        # Execute
        start = time.monotonic()
        client.send(1, 0, 1, 0, torch.ones(SIZE))
        client.send(7, 0, 1, 0, torch.ones(SIZE))
        # Assert
        assert time.monotonic() - start < 2
        assert not any(call.done() for call in idle)
    finally:
        release.set()
        client.close()
    assert set(node.inbox.wait_for(1, 0, [1, 7], timeout=1)) == {1, 7}


def malformed(rng: random.Random) -> tuple[list[bytes], Metadata]:
    """A Send stream and its metadata with one thing wrong, drawn from `rng`."""
    stream = frames(torch.randn(SIZE))
    header, data = stream[0], stream[1:]
    good = metadata(rng.choice([1, 7]))
    case = rng.randrange(14)
    if case == 0:  # undecodable bytes among the frames
        raw = serialized(stream)
        raw.insert(rng.randrange(len(raw) + 1), rng.randbytes(rng.randrange(1, 40)) + b"\xff\xff\xff")
        return raw, good
    if case == 1:  # data before the header, or no header at all
        return serialized(data if rng.random() < 0.5 else data[:1] + stream), good
    if case == 2:  # another kind of header
        other = fl_pb2.Frame(signal=fl_pb2.DONE) if rng.random() < 0.5 else fl_pb2.Frame(task=fl_pb2.Task())
        return serialized([other, *data]), good
    if case == 3:  # a header announcing far more bytes than a message has
        header.params.tensor.parts[0].num_bytes = rng.choice([SIZE * 4 + 1, 2**40, 2**63])
        return serialized([header, *data]), good
    if case == 4:  # data frames short of what the header announces
        return serialized([header, *data[:rng.randrange(len(data))]]), good
    if case == 5:  # more data than announced, or a frame after the message
        extra = fl_pb2.Frame(data=rng.randbytes(rng.randrange(1, 9))) if rng.random() < 0.5 else header
        return serialized([*stream, extra]), good
    if case == 6:  # a codec, dtype or shape not the inbox's
        field = rng.choice(["codec", "dtype", "shape"])
        if field == "shape":
            header.params.tensor.shape[:] = [rng.choice([SIZE + 1, 0, 2**40])]
        else:
            setattr(header.params.tensor, field, rng.choice(["topk", "float64", "bogus", ""]))
        return serialized([header, *data]), good
    if case == 7:  # NaN or Inf values
        bad = torch.randn(SIZE)
        bad[rng.randrange(SIZE)] = rng.choice([float("nan"), float("inf"), float("-inf")])
        return serialized(frames(bad)), good
    if case == 8:  # a round of zero, negative or far ahead
        header.params.version = rng.choice([0, -1, -(2**62)])
        return serialized([header, *data]), good
    if case == 9:  # a base version or state
        header.params.base_version = rng.randrange(1, 2**62)
        return serialized([header, *data]), good
    if case == 10:  # metadata missing or not integers
        key = rng.choice([CLIENT_KEY, TO_KEY, STEP_KEY])
        value = rng.choice(["", "x", "1.5", "9" * 5000])
        return serialized(stream), tuple((k, value if k == key else v) for k, v in good)
    if case == 11:  # a sender that is not an in-neighbour
        return serialized(stream), metadata(rng.choice([0, 2, 3, -1, 2**40]))
    if case == 12:  # a receiver not kept here
        return serialized(stream), ((CLIENT_KEY, "1"), (TO_KEY, str(rng.choice([1, 5, -3]))), (STEP_KEY, "0"))
    return serialized(stream), metadata(1, step=rng.choice([2, 7, -1, 2**62]))  # a step the round lacks


def test_malformed_send_streams_are_refused_and_change_nothing(served) -> None:
    node = served(node_zero())
    rng = random.Random(15)
    refusals = {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.PERMISSION_DENIED, Code.RESOURCE_EXHAUSTED}
    start = time.monotonic()

    codes = [code_of(node.send.future(iter(stream), metadata=meta), timeout=5)
             for stream, meta in (malformed(rng) for _ in range(200))]

    assert set(codes) <= refusals, set(codes) - refusals
    assert time.monotonic() - start < 30
    assert not node.inbox._messages and not node.inbox.take_bytes()
    message = torch.randn(SIZE)
    assert code_of(node.send.future(iter(serialized(frames(message))), metadata=metadata(7))) == Code.OK
    assert torch.equal(node.inbox.wait_for(1, 0, [7], timeout=1)[7], message)
