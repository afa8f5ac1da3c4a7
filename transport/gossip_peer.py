"""Gossip between nodes over gRPC: a `GossipServer` serves the `Inbox` of one node (`fl node`) or of many (the nodes
a simulation's host keeps), and a `GossipClient` pushes messages to the nodes behind one address.

A message is one flat tensor of one (round, step), sent as a codec's payload: the identity codec's (the bits arrive
as sent) or the compressed payload of a strategy that compresses (CHOCO), which the receiving inbox decodes with the
same codec. It travels as the `Gossip.Send` stream of fl.proto: a params header whose version is the round, and its
data frames; the call's metadata names the sender (with its token when the nodes share a secret), the receiver and
the gossip step. Each inbox counts the payload bytes it took in from each sender: the bytes of each directed edge.

The inbox refuses, with a status and a message, and stays unchanged:
  UNAUTHENTICATED     a missing or wrong token (when the node has a secret)
  NOT_FOUND           a receiver this server does not keep
  PERMISSION_DENIED   a sender that is not an in-neighbour in that round and step
  INVALID_ARGUMENT    a malformed stream, or a payload not of the inbox's codec, size and dtype, or not finite
  FAILED_PRECONDITION a (round, step) the node has already mixed
  ALREADY_EXISTS      a second message of the same sender for one (round, step)
  RESOURCE_EXHAUSTED  a round more than `ahead` rounds beyond the last one mixed (the sender retries later)
so it holds at most `ahead` rounds of messages of its in-neighbours. The server reads messages on a few threads: a
sender that stalls in the middle of a message holds one until its call's deadline.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch
from torch import Tensor

from transport import framing, wire
from transport.auth import CLIENT_KEY, TOKEN_KEY, authenticated_client, client_token
from transport.board import Refused
from transport.codecs.base import Codec, Payload
from transport.codecs.cast import IdentityCodec
from transport.grpc_server import ListenError
from transport.proto import fl_pb2, fl_pb2_grpc
from transport.grpc_common import add_port, open_channel

Code = grpc.StatusCode
STEP_KEY = "x-fl-step"
TO_KEY = "x-fl-to"
AHEAD_ROUNDS = 2  # messages of at most this many rounds beyond the last mixed one are held
RETRY = (Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED)  # a peer that is not up yet, or is rounds behind
CONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]  # peers start in any order: dial them again soon


class Inbox:
    """The messages a node has received and not yet mixed, keyed by (round, step, sender)."""

    def __init__(self, node: int, senders: Callable[[int, int], Iterable[int]], numel: int, dtype: torch.dtype,
                 codec: Codec | None = None, ahead: int = AHEAD_ROUNDS) -> None:
        """`senders(round, step)`: the node's in-neighbours in that step; messages are 1-D of `numel` `dtype`, sent
        as payloads of `codec` (default: the identity)."""
        self.node, self.senders, self.numel, self.dtype, self.ahead = node, senders, numel, dtype, ahead
        self.codec = codec if codec is not None else IdentityCodec()
        self.max_bytes = self.codec.payload_nbytes(numel, dtype)
        self.bytes_from: dict[int, int] = defaultdict(int)  # sender -> payload bytes taken in since `take_bytes`
        self._messages: dict[tuple[int, int, int], Tensor] = {}
        self._mixed = (0, 0)  # the last (round, step) taken: nothing at or before it is accepted again
        self._changed = threading.Condition()

    def check(self, round: int, step: int, sender: int) -> None:
        """Refused unless a message of `sender` for (round, step) is welcome now (before its data is read)."""
        if round < 1 or step < 0:
            raise Refused(Code.INVALID_ARGUMENT, f"round must be >= 1 and step >= 0, got round {round}, step {step}")
        try:
            senders = set(self.senders(round, step))
        except ValueError as error:  # a step the topology does not have
            raise Refused(Code.INVALID_ARGUMENT, str(error)) from None
        if sender not in senders:
            raise Refused(Code.PERMISSION_DENIED, f"node {sender} is not an in-neighbour of node {self.node} in round "
                                                  f"{round}, step {step}")
        with self._changed:
            if (round, step) <= self._mixed:
                raise Refused(Code.FAILED_PRECONDITION,
                              f"node {self.node} has already mixed round {round}, step {step}")
            if round > self._mixed[0] + self.ahead:
                raise Refused(Code.RESOURCE_EXHAUSTED, f"node {self.node} holds messages of rounds up to "
                                                       f"{self._mixed[0] + self.ahead}, not {round}: retry later")
            if (round, step, sender) in self._messages:
                raise Refused(Code.ALREADY_EXISTS, f"node {self.node} already holds node {sender}'s message of round "
                                                   f"{round}, step {step}")

    def decode(self, payload: Payload) -> Tensor:
        """The message a payload carries; INVALID_ARGUMENT unless it is one of the inbox's codec, size and dtype."""
        if payload.codec != self.codec.name or payload.shape != (self.numel,) or payload.dtype != self.dtype:
            raise Refused(Code.INVALID_ARGUMENT, f"a message is a {self.codec.name} payload of {self.numel} "
                                                 f"{self.dtype} values, got {payload.codec} {payload.shape} "
                                                 f"{payload.dtype}")
        try:
            return self.codec.decode(payload, {})[0].to(self.dtype)
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as error:
            raise Refused(Code.INVALID_ARGUMENT, f"the message cannot be decoded: {error}") from None

    def put(self, round: int, step: int, sender: int, message: Tensor, nbytes: int | None = None) -> None:
        """Keep `message` (that came as `nbytes` of payload; default its own size), or refuse it (see above)."""
        if message.dim() != 1 or message.numel() != self.numel or message.dtype != self.dtype:
            raise Refused(Code.INVALID_ARGUMENT, f"a message holds {self.numel} {self.dtype} values, got "
                                                 f"{tuple(message.shape)} {message.dtype}")
        if message.is_floating_point() and not torch.isfinite(message).all():
            raise Refused(Code.INVALID_ARGUMENT, f"node {sender}'s message of round {round} holds NaN or Inf")
        with self._changed:
            self.check(round, step, sender)
            self._messages[(round, step, sender)] = message
            self.bytes_from[sender] += message.numel() * message.element_size() if nbytes is None else nbytes
            self._changed.notify_all()

    def take_bytes(self) -> dict[int, int]:
        """Payload bytes taken in from each sender since the last call."""
        with self._changed:
            taken, self.bytes_from = dict(self.bytes_from), defaultdict(int)
        return taken

    def wait_for(self, round: int, step: int, senders: Iterable[int], timeout: float) -> dict[int, Tensor]:
        """The messages of `senders` for (round, step), once all are in; TimeoutError after `timeout` seconds."""
        keys = [(round, step, sender) for sender in senders]
        with self._changed:
            if not self._changed.wait_for(lambda: all(key in self._messages for key in keys), timeout):
                missing = sorted(sender for _, _, sender in set(keys) - set(self._messages))
                raise TimeoutError(f"node {self.node}: no message of round {round}, step {step} from node(s) "
                                   f"{missing} within {timeout:g} s (are they running, with matching TLS and tokens?)")
            self._mixed = (round, step)
            return {key[2]: self._messages.pop(key) for key in keys}


class GossipServicer:
    """`Gossip.Send`: read one message, check it, and put it in its receiver's inbox."""

    def __init__(self, inboxes: Mapping[int, Inbox], auth_secret: bytes | None) -> None:
        self.inboxes, self.auth_secret = inboxes, auth_secret

    def Send(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        try:
            sizes: list[int] = []
            frames = framing.parse(request_iterator, sizes)
            sender, receiver, step = self._caller(context)
            inbox = self.inboxes.get(receiver)
            if inbox is None:
                raise Refused(Code.NOT_FOUND, f"node {receiver} is not kept here (nodes {sorted(self.inboxes)})")
            header = _invalid(framing.read_header, frames, ("params",))
            round = header.params.version
            inbox.check(round, step, sender)
            parts = _invalid(framing.read_parts, header, frames, inbox.max_bytes)
            payload = _invalid(_payload, header, parts, frames)
            inbox.put(round, step, sender, inbox.decode(payload), payload.nbytes())
        except Refused as refusal:
            context.abort(refusal.code, str(refusal))
        return fl_pb2.GossipAck(received_bytes=sum(sizes)).SerializeToString()

    def _caller(self, context: grpc.ServicerContext) -> tuple[int, int, int]:
        """(sender, receiver, step) from the call's metadata; the sender proven by its token when there is a secret."""
        metadata = context.invocation_metadata() or ()
        values = dict(metadata)
        if self.auth_secret is not None and authenticated_client(self.auth_secret, metadata) is None:
            raise Refused(Code.UNAUTHENTICATED, "missing or wrong node token (is it the token of this node id?)")
        try:
            return int(values.get(CLIENT_KEY, "")), int(values.get(TO_KEY, "")), int(values.get(STEP_KEY, ""))
        except ValueError:
            raise Refused(Code.INVALID_ARGUMENT, f"a gossip call names its sender ({CLIENT_KEY}), receiver ({TO_KEY}) "
                                                 f"and step ({STEP_KEY}) as integers") from None


def _payload(header: fl_pb2.Frame, parts: list[bytearray], frames: Iterator[fl_pb2.Frame]) -> Payload:
    """The payload a params header and its parts' bytes carry, with no frame after it."""
    extra = next(frames, None)
    if extra is not None:
        raise framing.surplus(extra)
    params = wire.params_from_frame(header, parts)
    if params.base_version or params.state:
        raise ValueError("a gossip message is one whole tensor: no base version, no state")
    return params.payload


def _invalid(function: Callable, *args):
    """`function(*args)`, with a ValueError turned into INVALID_ARGUMENT."""
    try:
        return function(*args)
    except ValueError as error:
        raise Refused(Code.INVALID_ARGUMENT, str(error)) from error


class GossipServer:
    """A gRPC server for the inboxes of one node or of several; `port` is the port it listens on."""

    def __init__(self, inboxes: Inbox | Mapping[int, Inbox], address: str = "127.0.0.1:0", *, tls: tuple[str, str] | None = None,
                 auth_secret: bytes | None = None, chunk_size: int = framing.DEFAULT_CHUNK_SIZE,
                 max_calls: int = 64) -> None:
        """`tls`: (cert_path, key_path); `auth_secret`: every sender must prove its id with its token."""
        limit = chunk_size + framing.HEADER_ROOM
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                   ("grpc.so_reuseport", 0)]
        self._threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fl-gossip")
        self._server = grpc.server(self._threads, options=options, maximum_concurrent_rpcs=max_calls)
        inboxes = {inboxes.node: inboxes} if isinstance(inboxes, Inbox) else dict(inboxes)
        handler = grpc.stream_unary_rpc_method_handler(GossipServicer(inboxes, auth_secret).Send)
        service = fl_pb2.DESCRIPTOR.services_by_name["Gossip"].full_name
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Send": handler}),))
        try:
            self.port = add_port(self._server, address, tls)
        except RuntimeError as error:
            raise ListenError(f"cannot listen on {address} ({error}): is another process using that port?") from None
        self._server.start()

    def stop(self, grace: float | None = None) -> None:
        self._server.stop(grace).wait()
        self._threads.shutdown(wait=False)


class GossipClient:
    """Pushes messages to the nodes behind one address: it waits for the server to come up, and retries while the
    receiver is rounds behind, until `timeout_seconds` have passed (then TimeoutError). With `secret`, every call
    carries its sender's token."""

    def __init__(self, address: str, *, secret: bytes | None = None, root_cert_path: str | None = None,
                 chunk_size: int = framing.DEFAULT_CHUNK_SIZE, timeout_seconds: float = 60.0) -> None:
        self.address, self.secret = address, secret
        self.chunk_size, self.timeout_seconds = chunk_size, timeout_seconds
        limit = chunk_size + framing.HEADER_ROOM
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
                   *CONNECT_OPTIONS]
        self._channel = open_channel(address, root_cert_path, options)
        self._stub = fl_pb2_grpc.GossipStub(self._channel)

    def send(self, sender: int, receiver: int, round: int, step: int, message: Tensor | Payload) -> int:
        """Push `sender`'s message of (round, step) to `receiver` (a tensor goes as the identity codec's payload);
        returns the bytes the receiver's server read."""
        payload = message if isinstance(message, Payload) else \
            IdentityCodec().encode(message.detach().cpu().contiguous(), {})[0]
        header, parts = wire.params_frame(wire.ParamsMessage(round, payload))
        metadata = ((CLIENT_KEY, str(sender)), (TO_KEY, str(receiver)), (STEP_KEY, str(step)))
        metadata += ((TOKEN_KEY, client_token(self.secret, sender)),) if self.secret is not None else ()
        deadline, pause, refused = time.monotonic() + self.timeout_seconds, 0.05, None
        while True:
            try:
                reply = self._stub.Send(framing.to_frames(header, parts, self.chunk_size), metadata=metadata,
                                        timeout=max(deadline - time.monotonic(), 0.001), wait_for_ready=True)
                return reply.received_bytes
            except grpc.RpcError as error:
                if error.code() == Code.DEADLINE_EXCEEDED and refused is not None:
                    raise refused from None  # the peer refused until the time ran out
                if error.code() == Code.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"node {sender}: the peer at {self.address} took no message of round "
                                       f"{round} within {self.timeout_seconds:g} s (is it running, with matching TLS "
                                       f"settings?)") from error
                if error.code() not in RETRY or time.monotonic() + pause > deadline:
                    raise
                refused = error
            time.sleep(pause)
            pause = min(2 * pause, 1.0)

    def close(self) -> None:
        self._channel.close()
