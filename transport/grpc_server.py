"""The Federation servicer: the gRPC face of a TaskBoard. Clients only ever call in (Join, PullTask, FetchParams,
PushResult); every refusal carries a status and a message, and leaves the board unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures

import grpc
import torch

from transport import framing, wire
from transport.auth import WORKER, authenticated_client
from transport.board import Refused, TaskBoard
from transport.messages import Result, Task, tensor_bytes
from transport.proto import fl_pb2

Code = grpc.StatusCode


def _status(method: Callable) -> Callable:
    """Turn a Refused raised by a servicer method into its gRPC status."""

    @functools.wraps(method)
    def call(self, request, context):
        try:
            return method(self, request, context)
        except Refused as refusal:
            context.abort(refusal.code, str(refusal))
    return call


class FederationServicer:
    """The four client-initiated calls; streams are sent and received as serialized frames, bytes counted."""

    def __init__(self, board: TaskBoard, auth_secret: bytes | None, max_message_bytes: int, max_upload_bytes: int):
        self.board = board
        self.auth_secret = auth_secret
        self.max_message_bytes = max_message_bytes
        self.max_upload_bytes = max_upload_bytes

    @_status
    def Join(self, request: fl_pb2.JoinRequest, context: grpc.ServicerContext) -> fl_pb2.JoinReply:
        self._check_client(context, request.client_id)
        self.board.join(request.client_id)
        version = self.board.version
        return fl_pb2.JoinReply(chunk_size=self.board.chunk_size, max_message_bytes=self.max_message_bytes,
                                version=-1 if version is None else version, config=self.board.welcome)

    @_status
    def PullTask(self, request: fl_pb2.TaskRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._check_client(context, request.client_id)
        if request.task_ids:
            if request.client_id != WORKER:
                raise Refused(Code.INVALID_ARGUMENT, f"a batch of tasks is pulled as the worker (client id {WORKER})")
            return self._tasks_sent(self.board._claim(request.task_ids))
        outcome = self.board._next_task(request.client_id, request.task_id, request.wait_seconds)
        if isinstance(outcome, int):
            frames = iter([fl_pb2.Frame(signal=outcome)])
        else:
            frames = framing.to_frames(*wire.task_frame(outcome[1], outcome[0]), self.board.chunk_size)
        uncounted = 0 if isinstance(outcome, int) else tensor_bytes(outcome[1].state)
        return self._sent(request.client_id, (frame.SerializeToString() for frame in frames), uncounted)

    def _tasks_sent(self, claimed: list[tuple[int, Task]]) -> Iterator[bytes]:
        """Several tasks back to back, each counted for its own client."""
        for task_id, task in claimed:
            frames = framing.to_frames(*wire.task_frame(task, task_id), self.board.chunk_size)
            yield from self._sent(task.client_id, (f.SerializeToString() for f in frames), tensor_bytes(task.state))

    @_status
    def FetchParams(self, request: fl_pb2.ParamsRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._check_client(context, request.client_id)
        frames = self.board._params_frames(request.version, request.base_version)
        return iter(frames) if self.board.charge_params_per_task else self._sent(request.client_id, frames)

    @_status
    def PushResult(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> fl_pb2.PushReply:
        """One result, or a worker's several back to back. Each is checked and stored on its own once the frame after
        it is another result or the end; a refusal leaves the results before it stored and the rest unread."""
        proven = self._proven_client(context)
        sizes: list[int] = []
        frames = framing.parse(request_iterator, sizes)
        stored: list[int] = []
        frame = _invalid_argument(next, frames, None)
        while True:
            header = _invalid_argument(framing.read_header, iter([] if frame is None else [frame]), ("result",))
            first_size = len(sizes) - 1
            task_id, client_id = header.result.task_id, header.result.client_id
            _same_client(proven, client_id)
            self.board._reserve(task_id, client_id, header.result.version, header.result.kind)
            try:
                result = _invalid_argument(self._read_result, header, frames,
                                           about=f"client {client_id}, task {task_id}: ")
                frame = _invalid_argument(next, frames, None)
                if frame is not None and frame.WhichOneof("body") != "result":
                    raise Refused(Code.INVALID_ARGUMENT, str(framing.surplus(frame)))
            except BaseException:
                self.board._release(task_id)
                raise
            own_bytes = sum(sizes[first_size : len(sizes) - (frame is not None)])
            self.board._answer(task_id, result, own_bytes - tensor_bytes(result.state))  # state: simulation only
            stored.append(task_id)
            if frame is None:
                return fl_pb2.PushReply(task_id=stored[0], task_ids=stored)

    def _read_result(self, header: fl_pb2.Frame, frames: Iterator[fl_pb2.Frame]) -> Result:
        """The result with its update decoded; ValueError for anything malformed or not finite."""
        _, result = wire.result_from_frame(header, framing.read_parts(header, frames, self.max_upload_bytes))
        for where, tensors in (("tensors", result.tensors), ("state", result.state)):
            for name, tensor in tensors.items():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise ValueError(f"result {where}[{name!r}] has NaN or Inf values")
        if result.update is not None:
            result.update = self.board.decode_update(result.client_id, result.update)
        return result

    def _sent(self, client_id: int, frames: Iterable[bytes], uncounted: int = 0) -> Iterator[bytes]:
        """Serialized frames for a client, counted before the first goes out (so a round's traffic is complete
        once its results are in), less `uncounted` bytes: the client state a simulated task carries, which a
        deployed client keeps at home."""
        frames = list(frames)
        self.board._count_down(client_id, sum(map(len, frames)) - uncounted)
        return iter(frames)

    def _proven_client(self, context: grpc.ServicerContext) -> int | None:
        """The client id the call's token proves (None when the server is open); UNAUTHENTICATED if none."""
        if self.auth_secret is None:
            return None
        proven = authenticated_client(self.auth_secret, context.invocation_metadata())
        if proven is None:
            raise Refused(Code.UNAUTHENTICATED, "missing or wrong client token")
        return proven

    def _check_client(self, context: grpc.ServicerContext, client_id: int) -> None:
        _same_client(self._proven_client(context), client_id)


def _same_client(proven: int | None, client_id: int) -> None:
    """A token proves one client id (or the worker, who acts for all); the call must act for that client."""
    if proven is not None and proven != WORKER and proven != client_id:
        raise Refused(Code.PERMISSION_DENIED, f"the token proves client {proven}, not {client_id}")


def _invalid_argument(function: Callable, *args, about: str = ""):
    """`function(*args)`, with a ValueError turned into INVALID_ARGUMENT (its message prefixed by `about`)."""
    try:
        return function(*args)
    except ValueError as error:
        raise Refused(Code.INVALID_ARGUMENT, about + str(error)) from error


def serve(
    board: TaskBoard,
    address: str = "127.0.0.1:0",
    *,
    tls: tuple[str, str] | None = None,
    auth_secret: bytes | None = None,
    max_message_bytes: int | None = None,
    max_workers: int = 16,
    max_upload_bytes: int = 1 << 34,
) -> tuple[grpc.Server, int]:
    """Start a Federation server for `board`; returns it and its port. `tls` is (cert_path, key_path)."""
    limit = max_message_bytes or board.chunk_size + framing.HEADER_ROOM
    servicer = FederationServicer(board, auth_secret, limit, max_upload_bytes)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(servicer.Join, fl_pb2.JoinRequest.FromString,
                                                    fl_pb2.JoinReply.SerializeToString),
        "PullTask": grpc.unary_stream_rpc_method_handler(servicer.PullTask, fl_pb2.TaskRequest.FromString),
        "FetchParams": grpc.unary_stream_rpc_method_handler(servicer.FetchParams, fl_pb2.ParamsRequest.FromString),
        "PushResult": grpc.stream_unary_rpc_method_handler(servicer.PushResult,
                                                           response_serializer=fl_pb2.PushReply.SerializeToString),
    }
    service = fl_pb2.DESCRIPTOR.services_by_name["Federation"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port(address, credentials)
    server.start()
    return server, port
