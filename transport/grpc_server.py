"""The Federation servicer: the gRPC face of a TaskBoard, on grpc.aio so that idle or slow peers cost a coroutine,
never a thread. Clients only ever call in (Join, PullTask, FetchParams, PushResult); every refusal carries a status and
a message, and leaves the board unchanged.

Limits that keep one client from starving the others: every stream moves a frame at least every `idle_seconds` or is
cancelled; a client id has at most `calls_per_client` calls in progress; a result may announce no more bytes than the
server's admission allows, and its buffers grow only with data received; the server holds at most
`max_concurrent_calls` calls and refuses the rest at once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import grpc

from transport import framing, wire
from transport.auth import SESSION_KEY, WORKER, authenticated_client
from transport.board import Refused, TaskBoard
from transport.channel import ValuesRefused, refused_result
from transport.messages import Result, Task, tensor_bytes
from transport.proto import fl_pb2
from transport.grpc_common import (AioServer, CallSlots, ServerLimits, aio_server, invalid_argument,
                                   listen, parse, read_frames, refusals)

Code = grpc.StatusCode
MAX_WAIT_SECONDS = 30.0  # the longest a PullTask call is held before it answers WAIT



class _Wakeup:
    """Per-client asyncio events, set from any thread when the board queues a task for that client (or closes); a
    waiter takes its client's event before it checks the board, so no change is missed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._events: dict[int, asyncio.Event] = {}

    def event(self, client_id: int) -> asyncio.Event:
        return self._events.setdefault(client_id, asyncio.Event())

    def notify(self, client_id: int | None) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._fire, client_id)

    def _fire(self, client_id: int | None) -> None:
        for waiting in list(self._events) if client_id is None else [client_id]:
            event = self._events.pop(waiting, None)
            if event is not None:
                event.set()


class FederationServicer:
    """The four client-initiated calls; streams are sent and received as serialized frames, bytes counted."""

    def __init__(self, board: TaskBoard, auth_secret: bytes | None, max_message_bytes: int, limits: ServerLimits,
                 wakeup: _Wakeup) -> None:
        self.board, self.auth_secret = board, auth_secret
        self.max_message_bytes, self.limits, self.wakeup = max_message_bytes, limits, wakeup
        self._calls = CallSlots()  # calls in progress per client id

    @refusals
    async def Join(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = parse(fl_pb2.JoinRequest, request)
        self._check_client(context, request.client_id)
        with self._slot(request.client_id):
            session = self.board.join(request.client_id, request.replace)
        version = self.board.version
        return fl_pb2.JoinReply(chunk_size=self.board.chunk_size, max_message_bytes=self.max_message_bytes,
                                version=-1 if version is None else version, config=self.board.welcome,
                                session=session).SerializeToString()

    @refusals
    async def PullTask(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        request = parse(fl_pb2.TaskRequest, request)
        self._check_client(context, request.client_id)
        with self._slot(request.client_id):
            if request.task_ids:
                if request.client_id != WORKER:
                    raise Refused(Code.INVALID_ARGUMENT, f"a batch of tasks is pulled as the worker (client id {WORKER})")
                claimed = self.board._claim(request.task_ids)
                await self._send_tasks(context, claimed)
                return
            session = _session(context)
            self.board._check_session(request.client_id, session)
            wait = 0.0 if math.isnan(request.wait_seconds) else min(max(request.wait_seconds, 0.0), MAX_WAIT_SECONDS)
            outcome = await self._poll(request.client_id, wait,
                                       lambda: self.board._next_task(request.client_id, request.task_id, session))
            if outcome is None or isinstance(outcome, int):
                signal = fl_pb2.WAIT if outcome is None else outcome
                await self._write(context, [fl_pb2.Frame(signal=signal).SerializeToString()])
                return
            await self._send_tasks(context, [outcome])

    async def _send_tasks(self, context: grpc.aio.ServicerContext, claimed: list[tuple[int, Task]]) -> None:
        """Send claimed tasks; if sending fails midway (a cancelled call, a reader too slow), they are queued again."""
        try:
            await self._write(context, await asyncio.to_thread(self._tasks_sent, claimed))
        except BaseException:
            self.board._unpull(task_id for task_id, _ in claimed)
            raise

    def _tasks_sent(self, claimed: list[tuple[int, Task]]) -> list[bytes]:
        """Serialized tasks back to back, each counted for its own client (less the simulation state it carries)."""
        sent = []
        for task_id, task in claimed:
            frames = framing.to_frames(*wire.task_frame(task, task_id), self.board.chunk_size)
            sent += self._counted(task.client_id, [frame.SerializeToString() for frame in frames],
                                  tensor_bytes(task.state))
        return sent

    @refusals
    async def FetchParams(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        request = parse(fl_pb2.ParamsRequest, request)
        self._check_client(context, request.client_id)
        with self._slot(request.client_id):
            self.board._check_session(request.client_id, _session(context))
            frames = self.board._params_frames(request.version, request.base_version)
            if not self.board.charge_params_per_task:
                frames = self._counted(request.client_id, frames)
            await self._write(context, frames)

    @refusals
    async def PushResult(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        """One result, or a worker's several back to back. Each is checked and stored on its own once the frame after
        it is another result or the end; a refusal leaves the results before it stored and the rest unread."""
        proven, session = self._proven_client(context), _session(context)
        sizes: list[int] = []
        frames = self._frames(request_iterator, sizes)
        stored: list[int] = []
        with ExitStack() as slot:
            if proven is not None:  # a proven caller holds its slot from the start; an open server's, from the header
                slot.enter_context(self._slot(proven))
            frame = await anext(frames, None)
            if proven is None:
                slot.enter_context(self._slot(frame.result.client_id if frame is not None else WORKER))
            while True:
                if frame is None or frame.WhichOneof("body") != "result":
                    invalid_argument(framing.read_header, iter([] if frame is None else [frame]), ("result",))
                header, first_size = frame.result, len(sizes) - 1
                _same_client(proven, header.client_id)
                self.board._reserve(header.task_id, header.client_id, header.version, header.kind, session)
                try:
                    (result, refusal), frame = await self._read_result(frame, frames)
                    own_bytes = sum(sizes[first_size : len(sizes) - (frame is not None)])
                    self.board._answer(header.task_id, result, own_bytes - tensor_bytes(result.state), session)
                except BaseException:
                    self.board._release(header.task_id)
                    raise
                if refusal is not None:  # the task is answered as failed; the sender hears why
                    raise Refused(Code.INVALID_ARGUMENT, f"client {header.client_id}, task {header.task_id}: "
                                                         f"{refusal}")
                stored.append(header.task_id)
                if frame is None:
                    return fl_pb2.PushReply(task_id=stored[0], task_ids=stored).SerializeToString()

    async def _read_result(self, header: fl_pb2.Frame, frames: AsyncIterator[fl_pb2.Frame]
                           ) -> tuple[tuple[Result, ValuesRefused | None], fl_pb2.Frame | None]:
        """The admitted result (or the refused one, with why) and the frame after it (another result's header, or
        None at the end)."""
        about = f"client {header.result.client_id}, task {header.result.task_id}: "
        reader = invalid_argument(framing.PartsReader, header, self.board.upload_limit(), about=about)
        while not reader.done and (frame := await anext(frames, None)) is not None:
            invalid_argument(reader.feed, frame, about=about)
        parts = invalid_argument(reader.result, about=about)
        after = await anext(frames, None)
        if after is not None and after.WhichOneof("body") != "result":
            raise Refused(Code.INVALID_ARGUMENT, about + str(framing.surplus(after)))
        return await asyncio.to_thread(invalid_argument, self._admitted, header, parts, about=about), after

    def _admitted(self, header: fl_pb2.Frame, parts: list[bytearray]) -> tuple[Result, ValuesRefused | None]:
        _, result = wire.result_from_frame(header, parts)
        try:
            return self.board._admission().admit(result), None
        except ValuesRefused as refusal:
            return refused_result(result), refusal

    def _frames(self, request_iterator: AsyncIterator[bytes], sizes: list[int]) -> AsyncIterator[fl_pb2.Frame]:
        """Parsed frames, each within `idle_seconds` of the last; each one's size appended to `sizes`."""
        return read_frames(request_iterator, sizes, self.limits.idle_seconds)

    async def _write(self, context: grpc.aio.ServicerContext, frames: Iterable[bytes]) -> None:
        for frame in frames:
            try:
                await asyncio.wait_for(context.write(frame), self.limits.idle_seconds)
            except asyncio.TimeoutError:
                raise Refused(Code.DEADLINE_EXCEEDED, f"the client read nothing for {self.limits.idle_seconds:g} s") \
                    from None

    async def _poll(self, client_id: int, seconds: float, attempt: Callable[[], Any]) -> Any:
        """`attempt()` until it gives something other than None, retried whenever the board changes for `client_id`,
        for at most `seconds`; None if nothing came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            event = self.wakeup.event(client_id)  # taken before the attempt, so a change after it is not missed
            outcome = attempt()
            remaining = deadline - loop.time()
            if outcome is not None or remaining <= 0:
                return outcome
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _counted(self, client_id: int, frames: list[bytes], uncounted: int = 0) -> list[bytes]:
        """Count frames for a client before the first goes out (so a round's traffic is complete once its results
        are in), less `uncounted` bytes: the client state a simulated task carries, which a deployed client keeps at
        home."""
        self.board._count_down(client_id, sum(map(len, frames)) - uncounted)
        return frames

    @contextmanager
    def _slot(self, client_id: int) -> Iterator[None]:
        """One of the client's concurrent calls; RESOURCE_EXHAUSTED when it has its fill."""
        limit = self.limits.calls_per_worker if client_id == WORKER else self.limits.calls_per_client
        with self._calls.slot(client_id, limit, f"client {client_id}"):
            yield

    def _proven_client(self, context: grpc.aio.ServicerContext) -> int | None:
        """The client id the call's token proves (None when the server is open); UNAUTHENTICATED if none."""
        if self.auth_secret is None:
            return None
        proven = authenticated_client(self.auth_secret, context.invocation_metadata() or ())
        if proven is None:
            raise Refused(Code.UNAUTHENTICATED, "missing or wrong client token (is it the token of this client id?)")
        if proven == WORKER:
            self.board._refuse_worker_if_deployed()
        return proven

    def _check_client(self, context: grpc.aio.ServicerContext, client_id: int) -> None:
        _same_client(self._proven_client(context), client_id)


def _same_client(proven: int | None, client_id: int) -> None:
    """A token proves one client id (or the worker, who acts for all); the call must act for that client."""
    if proven is not None and proven != WORKER and proven != client_id:
        raise Refused(Code.PERMISSION_DENIED, f"the token proves client {proven}, not {client_id}")


def _session(context: grpc.aio.ServicerContext) -> str:
    value = dict(context.invocation_metadata() or ()).get(SESSION_KEY, "")
    return value if isinstance(value, str) else ""


class FederationServer(AioServer):
    """A grpc.aio server for `board` on an event loop of its own thread, started and stopped from synchronous code."""

    def __init__(self, board: TaskBoard, address: str, tls: tuple[str, str] | None, auth_secret: bytes | None,
                 max_message_bytes: int, limits: ServerLimits) -> None:
        super().__init__("fl-grpc-server",
                         lambda: self._start(board, address, tls, auth_secret, max_message_bytes, limits))

    async def _start(self, board: TaskBoard, address: str, tls: tuple[str, str] | None, auth_secret: bytes | None,
                     max_message_bytes: int, limits: ServerLimits) -> tuple[grpc.aio.Server, int]:
        wakeup = _Wakeup(asyncio.get_running_loop())
        servicer = FederationServicer(board, auth_secret, max_message_bytes, limits, wakeup)
        server = aio_server(max_message_bytes, limits.max_concurrent_calls)
        server.add_generic_rpc_handlers((_handlers(servicer),))
        port = listen(server, address, tls)
        await server.start()
        board.on_change(wakeup.notify)
        return server, port


def _handlers(servicer: FederationServicer) -> grpc.GenericRpcHandler:
    """Requests arrive as raw bytes (the servicer parses them, so an undecodable one is INVALID_ARGUMENT)."""
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(servicer.Join),
        "PullTask": grpc.unary_stream_rpc_method_handler(servicer.PullTask),
        "FetchParams": grpc.unary_stream_rpc_method_handler(servicer.FetchParams),
        "PushResult": grpc.stream_unary_rpc_method_handler(servicer.PushResult),
    }
    return grpc.method_handlers_generic_handler(fl_pb2.DESCRIPTOR.services_by_name["Federation"].full_name, handlers)


def serve(
    board: TaskBoard,
    address: str = "127.0.0.1:0",
    *,
    tls: tuple[str, str] | None = None,
    auth_secret: bytes | None = None,
    max_message_bytes: int | None = None,
    limits: ServerLimits = ServerLimits(),
) -> tuple[FederationServer, int]:
    """Start a Federation server for `board`; returns it and its port. `tls` is (cert_path, key_path).
    ListenError when the address cannot be bound (a port in use)."""
    limit = max_message_bytes or board.chunk_size + framing.HEADER_ROOM
    server = FederationServer(board, address, tls, auth_secret, limit, limits)
    return server, server.port
