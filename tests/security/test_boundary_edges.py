"""Edges of the server boundary: call slots count before the first frame, a task whose sending fails is queued
again, a replaced session's poll takes nothing, a refused batch claims nothing."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch

from tests.grpc_helpers import CHUNK, PayloadAdmission, raw
from transport.auth import client_token
from transport.board import Refused, TaskBoard
from transport.grpc_client import Assignment, FederationClient
from transport.grpc_common import ServerLimits
from transport.grpc_server import serve
from transport.messages import Task
from transport.proto import fl_pb2

Code = grpc.StatusCode
SECRET = b"edges"


def test_silent_pushes_of_a_proven_client_use_up_its_slots_not_the_server(tmp_path) -> None:
    board = TaskBoard(PayloadAdmission(), chunk_size=CHUNK)
    server, port = serve(board, auth_secret=SECRET, limits=ServerLimits(calls_per_client=2, idle_seconds=20))
    silence = threading.Event()

    def nothing():
        silence.wait(20)
        yield from ()

    try:
        with FederationClient(f"127.0.0.1:{port}", client_id=1, token=client_token(SECRET, 1),
                              timeout_seconds=10) as one, \
             FederationClient(f"127.0.0.1:{port}", client_id=2, token=client_token(SECRET, 2),
                              timeout_seconds=10) as two:
            silent = [one._stub.PushResult.future(nothing(), metadata=one._metadata(1)) for _ in range(2)]
            refused = _refused_once_the_calls_arrive(one)
            assert refused.code() == Code.RESOURCE_EXHAUSTED and "2 calls in progress" in refused.details()
            assert two.join(2).chunk_size == CHUNK  # another client is served
            silence.set()
            for call in silent:
                call.exception(timeout=10)
    finally:
        silence.set()
        server.stop(None)


def _refused_once_the_calls_arrive(client: FederationClient, seconds: float = 5.0) -> grpc.RpcError:
    """The refusal of a Join by `client`, tried until the server holds its silent calls (they arrive in any order)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.join(1)
        except grpc.RpcError as error:
            return error
        assert time.monotonic() < deadline, "the server never counted the silent calls"
        time.sleep(0.02)


def test_a_task_whose_sending_fails_midway_is_queued_again() -> None:
    board = TaskBoard(PayloadAdmission(), chunk_size=CHUNK)
    board.publish(1, raw(torch.zeros(10)))
    task_id = board.post(Task("train", 1, 3, seed=0, tensors={"big": torch.zeros(4_000_000)}))
    server, port = serve(board)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.unary_stream("/fl.Federation/PullTask")(fl_pb2.TaskRequest(client_id=3).SerializeToString())
            next(stream)  # the header arrives, then the reader gives up
            stream.cancel()
        with FederationClient(f"127.0.0.1:{port}", timeout_seconds=10) as client:
            pulled = client.pull_task(3, wait_seconds=5)
    finally:
        server.stop(None)

    assert isinstance(pulled, Assignment) and pulled.task_id == task_id


def test_a_replaced_sessions_long_poll_takes_nothing() -> None:
    board = TaskBoard(PayloadAdmission(), chunk_size=CHUNK, deployed=True)
    board.publish(1, raw(torch.zeros(10)))
    server, port = serve(board)
    address = f"127.0.0.1:{port}"
    try:
        with FederationClient(address, client_id=0, timeout_seconds=10) as old, \
             FederationClient(address, client_id=0, timeout_seconds=10) as new:
            old.join(0)
            outcome: dict = {}
            poll = threading.Thread(target=lambda: outcome.setdefault("old", _pulled(old, 5)))
            poll.start()
            new.join(0, replace=True)
            task_id = board.post(Task("train", 1, 0, seed=0))
            poll.join(timeout=10)
            assert new.pull_task(0, wait_seconds=5).task_id == task_id
    finally:
        board.close()
        server.stop(None)

    assert outcome["old"] == Code.FAILED_PRECONDITION


def _pulled(client: FederationClient, wait: float):
    try:
        return client.pull_task(0, wait_seconds=wait)
    except grpc.RpcError as error:
        return error.code()


def test_a_refused_batch_claims_nothing_and_names_each_task_once() -> None:
    board = TaskBoard(PayloadAdmission(), chunk_size=CHUNK)
    board.publish(1, raw(torch.zeros(10)))
    task_id = board.post(Task("train", 1, 2, seed=0))
    before = board.snapshot()

    with pytest.raises(Refused) as missing:
        board._claim([task_id, 999])
    with pytest.raises(Refused) as twice:
        board._claim([task_id, task_id])

    assert missing.value.code == Code.NOT_FOUND and twice.value.code == Code.INVALID_ARGUMENT
    assert board.snapshot() == before
