"""Gossip between nodes over gRPC: a `GossipServer` serves the `Inbox` of one node (`fl node`) or of many (the nodes
a simulation's host keeps), and a `GossipClient` pushes messages to the nodes behind one address.

A message is one flat tensor of one (round, step), sent as a codec's payload: the identity codec's (the bits arrive
as sent) or the compressed payload of a strategy that compresses (CHOCO), which the receiving inbox decodes with the
same codec. It travels as the `Gossip.Send` stream of fl.proto: a params header whose version is the round, and its
data frames; the call's metadata names the sender (with its token when the nodes share a secret), the receiver and
the gossip step. Each inbox counts the payload bytes it took in from each sender: the bytes of each directed edge.

Who sends: with per-node certificates (mutual TLS, `client_ca`) the sender is the node its certificate names
("node-N" as its common name or a DNS subjectAltName), which no other node can claim. With a shared secret, a token
proves that the caller holds the secret: every node does, so it keeps strangers out but does not tell nodes apart.

The server runs on grpc.aio, so an idle call costs a coroutine, not a thread, with the federation server's limits
(`ServerLimits`): a stream that moves no frame for `idle_seconds` is cancelled; a sender has at most
`calls_per_client` calls in progress to one receiver (from the start of the call when its id is proven, else from its
first frame); the server holds at most `max_concurrent_calls` calls. The bytes a message announces are checked before
any is kept. A refusal carries a status and a message, and leaves the inbox unchanged:
  UNAUTHENTICATED     a missing or wrong token (when the node has a secret), or a certificate naming no node
  NOT_FOUND           a receiver this server does not keep
  PERMISSION_DENIED   a sender that is not an in-neighbour in that round and step, or not the certificate's node
  INVALID_ARGUMENT    a malformed stream, a step the round does not have, or a payload not of the inbox's codec, size
                      and dtype, not finite, or of an L2 norm beyond the inbox's bound (`max_norm`)
  FAILED_PRECONDITION a (round, step) the node has already mixed
  ALREADY_EXISTS      a second message of the same sender for one (round, step)
  RESOURCE_EXHAUSTED  a round more than `ahead` rounds beyond the last one mixed, `HELD_PER_SENDER` messages of the
                      sender held already, or its calls' fill (the sender retries later)
  DEADLINE_EXCEEDED   a stream that moved no frame for `idle_seconds`
so it holds at most `HELD_PER_SENDER` messages of each in-neighbour, of at most `ahead` rounds.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import ExitStack

import grpc
import torch
from torch import Tensor

from transport import framing, wire
from transport.auth import CLIENT_KEY, TOKEN_KEY, authenticated_client, client_token
from transport.board import Refused
from transport.codecs.base import Codec, Payload
from transport.codecs.cast import IdentityCodec
from transport.grpc_common import (AioServer, CallSlots, ServerLimits, aio_server, certificate_names, invalid_argument,
                                   listen, open_channel, peer_names, read_frames, refusals)
from transport.proto import fl_pb2, fl_pb2_grpc

Code = grpc.StatusCode
STEP_KEY = "x-fl-step"
TO_KEY = "x-fl-to"
AHEAD_ROUNDS = 2  # messages of at most this many rounds beyond the last mixed one are held
HELD_PER_SENDER = 8  # messages of one sender held at most (beyond: RESOURCE_EXHAUSTED, the sender retries)
NODE_NAME = re.compile(r"node-(\d{1,18})")  # how a certificate names its node
RETRY = (Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED)  # a peer that is not up yet, or is rounds behind
CONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]  # peers start in any order: dial them again soon


def one_step(round: int) -> int:
    """The gossip steps of a round of most strategies."""
    return 1


def unbounded() -> float:
    return math.inf


class Inbox:
    """The messages a node has received and not yet mixed, keyed by (round, step, sender)."""

    def __init__(self, node: int, senders: Callable[[int, int], Iterable[int]], numel: int, dtype: torch.dtype,
                 codec: Codec | None = None, ahead: int = AHEAD_ROUNDS, *, steps: Callable[[int], int] = one_step,
                 max_norm: Callable[[], float] = unbounded) -> None:
        """`senders(round, step)`: the node's in-neighbours in that step, of the `steps(round)` steps of a round;
        messages are 1-D of `numel` `dtype`, sent as payloads of `codec` (default: the identity), of an L2 norm of at
        most `max_norm()`."""
        self.node, self.senders, self.numel, self.dtype, self.ahead = node, senders, numel, dtype, ahead
        self.steps, self.max_norm = steps, max_norm
        self.codec = codec if codec is not None else IdentityCodec()
        self.max_bytes = self.codec.payload_nbytes(numel, dtype)
        self.bytes_from: dict[int, int] = defaultdict(int)  # sender -> payload bytes taken in since `take_bytes`
        self._messages: dict[tuple[int, int, int], Tensor] = {}
        self._held: Counter[int] = Counter()  # sender -> its messages held
        self._refused: dict[int, tuple[int, int, str]] = {}  # sender -> (round, step, why) of its last refused one
        self._mixed = (0, 0)  # the last (round, step) taken: nothing at or before it is accepted again
        self._changed = threading.Condition()

    def check(self, round: int, step: int, sender: int) -> None:
        """Refused unless a message of `sender` for (round, step) is welcome now (before its data is read)."""
        if round < 1 or step < 0:
            raise Refused(Code.INVALID_ARGUMENT, f"round must be >= 1 and step >= 0, got round {round}, step {step}")
        if step >= (steps := self.steps(round)):
            raise Refused(Code.INVALID_ARGUMENT, f"round {round} has {steps} gossip step(s): no step {step}")
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
            if self._held[sender] >= HELD_PER_SENDER:
                raise Refused(Code.RESOURCE_EXHAUSTED, f"node {self.node} already holds {HELD_PER_SENDER} messages of "
                                                       f"node {sender}: retry later")

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
        self.check(round, step, sender)
        self._check_values(round, sender, message)
        with self._changed:
            self.check(round, step, sender)
            self._messages[(round, step, sender)] = message
            self._held[sender] += 1
            self.bytes_from[sender] += message.numel() * message.element_size() if nbytes is None else nbytes
            self._changed.notify_all()

    def refused(self, round: int, step: int, sender: int, refusal: Refused) -> None:
        """Note why an in-neighbour's message of (round, step) was refused (its data, after `check` passed), for the
        timeout that may follow."""
        with self._changed:
            self._refused[sender] = (round, step, f"{refusal.code.name}: {refusal}")

    def _check_values(self, round: int, sender: int, message: Tensor) -> None:
        """INVALID_ARGUMENT unless `message` has the inbox's size and dtype, is finite and within the norm bound."""
        if message.dim() != 1 or message.numel() != self.numel or message.dtype != self.dtype:
            raise Refused(Code.INVALID_ARGUMENT, f"a message holds {self.numel} {self.dtype} values, got "
                                                 f"{tuple(message.shape)} {message.dtype}")
        if message.is_floating_point() and not torch.isfinite(message).all():
            raise Refused(Code.INVALID_ARGUMENT, f"node {sender}'s message of round {round} holds NaN or Inf")
        bound = self.max_norm()
        norm = float(torch.linalg.vector_norm(message.to(torch.float64))) if bound < math.inf else 0.0
        if norm > bound:
            raise Refused(Code.INVALID_ARGUMENT, f"node {sender}'s message of round {round} has L2 norm {norm:.3g}, "
                                                 f"beyond node {self.node}'s bound {bound:.3g} (max_update_norm times "
                                                 f"its own model's norm, at least 1)")

    def take_bytes(self) -> dict[int, int]:
        """Payload bytes taken in from each sender since the last call."""
        with self._changed:
            taken, self.bytes_from = dict(self.bytes_from), defaultdict(int)
        return taken

    def wait_for(self, round: int, step: int, senders: Iterable[int], timeout: float) -> dict[int, Tensor]:
        """The messages of `senders` for (round, step), once all are in; TimeoutError after `timeout` seconds,
        naming the missing senders (and why their messages were refused, if they were)."""
        keys = [(round, step, sender) for sender in senders]
        with self._changed:
            if not self._changed.wait_for(lambda: all(key in self._messages for key in keys), timeout):
                missing = sorted(sender for _, _, sender in set(keys) - set(self._messages))
                raise TimeoutError(f"node {self.node}: no message of round {round}, step {step} from node(s) "
                                   f"{missing} within {timeout:g} s" + self._why(round, step, missing))
            self._mixed = (round, step)
            self._held.subtract(key[2] for key in keys)
            return {key[2]: self._messages.pop(key) for key in keys}

    def _why(self, round: int, step: int, missing: list[int]) -> str:
        """What a timeout message adds: the refusals of the missing senders' messages, or where to look."""
        refused = [f"node {sender}'s message was refused ({self._refused[sender][2]})" for sender in missing
                   if self._refused.get(sender, ())[:2] == (round, step)]
        return "; " + "; ".join(refused) if refused else " (are they running, with matching TLS and tokens?)"


def nodes_named(names: Iterable[str]) -> set[int]:
    """The node ids that certificate names ("node-N") among `names` stand for."""
    return {int(match.group(1)) for name in names if (match := NODE_NAME.fullmatch(name))}


def certificate_nodes(cert_path: str) -> set[int]:
    """The node ids a PEM certificate names (ValueError if the file is not one; OSError if it cannot be read)."""
    return nodes_named(certificate_names(cert_path))


class GossipServicer:
    """`Gossip.Send`: read one message, check it, and put it in its receiver's inbox."""

    def __init__(self, inboxes: Mapping[int, Inbox], auth_secret: bytes | None, limits: ServerLimits,
                 certified: bool) -> None:
        """`certified`: callers present certificates that name their node (mutual TLS)."""
        self.inboxes, self.auth_secret, self.limits, self.certified = inboxes, auth_secret, limits, certified
        self._calls = CallSlots()

    @refusals
    async def Send(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        sender, receiver, step = self._caller(context)
        inbox = self.inboxes.get(receiver)
        if inbox is None:
            raise Refused(Code.NOT_FOUND, f"node {receiver} is not kept here (nodes {sorted(self.inboxes)})")
        sizes: list[int] = []
        frames = read_frames(request_iterator, sizes, self.limits.idle_seconds)
        proven = self.certified or self.auth_secret is not None
        with ExitStack() as slot:
            if proven:  # a proven caller holds its slot from the start; an unproven one, from its first frame
                slot.enter_context(self._slot(sender, receiver))
            first = await anext(frames, None)
            if not proven:
                slot.enter_context(self._slot(sender, receiver))
            header = invalid_argument(framing.read_header, iter([] if first is None else [first]), ("params",))
            round = header.params.version
            inbox.check(round, step, sender)
            try:
                payload = await _payload(header, frames, inbox.max_bytes)
                await asyncio.to_thread(_put, inbox, round, step, sender, payload)
            except Refused as refusal:
                if refusal.code == Code.INVALID_ARGUMENT:
                    inbox.refused(round, step, sender, refusal)
                raise
        return fl_pb2.GossipAck(received_bytes=sum(sizes)).SerializeToString()

    def _slot(self, sender: int, receiver: int):
        return self._calls.slot((sender, receiver), self.limits.calls_per_client, f"node {sender}")

    def _caller(self, context: grpc.aio.ServicerContext) -> tuple[int, int, int]:
        """(sender, receiver, step) from the call's metadata; the sender proven by its certificate and by its token,
        as the server requires."""
        metadata = context.invocation_metadata() or ()
        values = dict(metadata)
        try:
            sender, receiver, step = (int(values.get(key, "")) for key in (CLIENT_KEY, TO_KEY, STEP_KEY))
        except ValueError:
            raise Refused(Code.INVALID_ARGUMENT, f"a gossip call names its sender ({CLIENT_KEY}), receiver ({TO_KEY}) "
                                                 f"and step ({STEP_KEY}) as integers") from None
        if self.certified:
            _same_node(context, sender)
        if self.auth_secret is not None and authenticated_client(self.auth_secret, metadata) is None:
            raise Refused(Code.UNAUTHENTICATED, "missing or wrong node token (is it the token of this node id?)")
        return sender, receiver, step


def _same_node(context: grpc.aio.ServicerContext, sender: int) -> None:
    """The caller's certificate must name exactly one node, `sender`."""
    nodes = nodes_named(peer_names(context))
    if len(nodes) != 1:
        raise Refused(Code.UNAUTHENTICATED, f"the caller's certificate must name one node (node-N), it names "
                                            f"{sorted(nodes) or 'none'}")
    if sender not in nodes:
        raise Refused(Code.PERMISSION_DENIED, f"the caller's certificate is node {nodes.pop()}'s: it cannot send "
                                              f"as node {sender}")


async def _payload(header: fl_pb2.Frame, frames: AsyncIterator[fl_pb2.Frame], max_bytes: int) -> Payload:
    """The payload a params header and its data frames carry (at most `max_bytes`, checked before any is kept),
    with no frame after them."""
    reader = invalid_argument(framing.PartsReader, header, max_bytes)
    while not reader.done and (frame := await anext(frames, None)) is not None:
        invalid_argument(reader.feed, frame)
    parts = invalid_argument(reader.result)
    extra = await anext(frames, None)
    if extra is not None:
        raise Refused(Code.INVALID_ARGUMENT, str(framing.surplus(extra)))
    params = invalid_argument(wire.params_from_frame, header, parts)
    if params.base_version or params.state:
        raise Refused(Code.INVALID_ARGUMENT, "a gossip message is one whole tensor: no base version, no state")
    return params.payload


def _put(inbox: Inbox, round: int, step: int, sender: int, payload: Payload) -> None:
    inbox.put(round, step, sender, inbox.decode(payload), payload.nbytes())


class GossipServer(AioServer):
    """A grpc.aio server for the inboxes of one node or of several; `port` is the port it listens on."""

    def __init__(self, inboxes: Inbox | Mapping[int, Inbox], address: str = "127.0.0.1:0", *,
                 tls: tuple[str, str] | None = None, client_ca: str | None = None, auth_secret: bytes | None = None,
                 chunk_size: int = framing.DEFAULT_CHUNK_SIZE, limits: ServerLimits = ServerLimits()) -> None:
        """`tls`: (cert_path, key_path); `client_ca`: every caller presents a certificate that this CA signed and
        that names its node, which is the sender (mutual TLS); `auth_secret`: every sender proves it holds the
        nodes' secret with its token."""
        if client_ca is not None and tls is None:
            raise ValueError("mutual TLS (client_ca) needs the server's own certificate and key (tls)")
        inboxes = {inboxes.node: inboxes} if isinstance(inboxes, Inbox) else dict(inboxes)
        servicer = GossipServicer(inboxes, auth_secret, limits, certified=client_ca is not None)
        super().__init__("fl-gossip-server", lambda: _start(servicer, address, tls, client_ca,
                                                            chunk_size + framing.HEADER_ROOM, limits))


async def _start(servicer: GossipServicer, address: str, tls: tuple[str, str] | None, client_ca: str | None,
                 max_message_bytes: int, limits: ServerLimits) -> tuple[grpc.aio.Server, int]:
    server = aio_server(max_message_bytes, limits.max_concurrent_calls)
    handler = grpc.stream_unary_rpc_method_handler(servicer.Send)
    service = fl_pb2.DESCRIPTOR.services_by_name["Gossip"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Send": handler}),))
    port = listen(server, address, tls, client_ca)
    await server.start()
    return server, port


class GossipClient:
    """Pushes messages to the nodes behind one address: it waits for the server to come up, and retries while the
    receiver is rounds behind, until `timeout_seconds` have passed (then TimeoutError). With `secret`, every call
    carries its sender's token; with `identity` ((cert, key) PEM files), it presents that certificate."""

    def __init__(self, address: str, *, secret: bytes | None = None, root_cert_path: str | None = None,
                 identity: tuple[str, str] | None = None, chunk_size: int = framing.DEFAULT_CHUNK_SIZE,
                 timeout_seconds: float = 60.0) -> None:
        self.address, self.secret = address, secret
        self.chunk_size, self.timeout_seconds = chunk_size, timeout_seconds
        limit = chunk_size + framing.HEADER_ROOM
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
                   *CONNECT_OPTIONS]
        self._channel = open_channel(address, root_cert_path, options, identity)
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
