"""A simulation worker's batches: many clients' tasks pulled and results pushed in one call each."""

from __future__ import annotations

import grpc
import pytest
import torch

from tests.grpc_helpers import CHUNK, SIZE, Federation, PayloadAdmission, raw, refusal, result
from transport import framing, wire
from transport.auth import client_token
from transport.grpc_client import FederationClient
from transport.board import TaskBoard
from transport.grpc_server import serve
from transport.messages import Task
from transport.proto import fl_pb2

Code = grpc.StatusCode


def post_three(board: TaskBoard) -> list[int]:
    return [board.post(Task("train", 1, client_id, seed=client_id)) for client_id in (1, 2, 3)]


def test_a_batch_pull_and_push_serves_three_clients_in_two_calls(fed: Federation) -> None:
    task_ids = post_three(fed.board)

    assignments = fed.client.pull_tasks(task_ids)
    stored = fed.client.push_results([(a.task_id, result(a.task.client_id, float(a.task.client_id)))
                                      for a in assignments])

    assert [a.task.client_id for a in assignments] == [1, 2, 3] and stored == task_ids
    for task_id, client_id in zip(task_ids, (1, 2, 3)):
        assert torch.equal(fed.board.take(task_id, timeout=1).update, torch.full((SIZE,), float(client_id)))


def test_batch_traffic_is_counted_per_client_from_its_own_frames(fed: Federation) -> None:
    task_ids = post_three(fed.board)
    assignments = fed.client.pull_tasks(task_ids)
    sent = {a.task.client_id: result(a.task.client_id) for a in assignments}

    fed.client.push_results([(a.task_id, sent[a.task.client_id]) for a in assignments])

    down, up = fed.board.traffic.take()
    for a in assignments:
        own_down = framing.to_frames(*wire.task_frame(a.task, a.task_id), CHUNK)
        own_up = framing.to_frames(*wire.result_frame(sent[a.task.client_id], a.task_id), CHUNK)
        assert down[a.task.client_id] == sum(f.ByteSize() for f in own_down)
        assert up[a.task.client_id] == sum(f.ByteSize() for f in own_up)


def test_a_bad_result_in_a_batch_stores_those_before_it_and_leaves_the_rest_open(fed: Federation) -> None:
    task_ids = post_three(fed.board)
    fed.client.pull_tasks(task_ids)
    batch = [(task_ids[0], result(1)), (task_ids[1], result(2, value=float("nan"))), (task_ids[2], result(3))]

    error = refusal(fed.client.push_results, batch)

    assert error.code() == Code.INVALID_ARGUMENT and "NaN" in error.details()
    assert fed.board.take(task_ids[0], timeout=1).client_id == 1
    assert fed.client.push_results([(task_ids[1], result(2))]) == [task_ids[1]]  # a good one is still welcome
    assert fed.client.push_results(batch[2:]) == [task_ids[2]]


def test_only_the_holder_of_the_secret_may_pull_a_batch():
    secret = b"the server's secret"
    board = TaskBoard(PayloadAdmission(lambda client_id, payload: payload.parts["values"]), chunk_size=CHUNK)
    board.publish(1, raw(torch.zeros(SIZE)))
    server, port = serve(board, auth_secret=secret)
    task_ids = post_three(board)
    try:
        with FederationClient(f"127.0.0.1:{port}", client_id=1, token=client_token(secret, 1)) as one_client:
            assert refusal(one_client.pull_tasks, task_ids).code() in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED)
        with FederationClient(f"127.0.0.1:{port}", auth_secret=secret) as worker:
            assert [a.task_id for a in worker.pull_tasks(task_ids)] == task_ids
    finally:
        server.stop(None)


def test_a_batch_pull_names_the_worker(fed: Federation) -> None:
    task_ids = post_three(fed.board)

    with pytest.raises(grpc.RpcError) as error:
        list(fed.client._stub.PullTask(fl_pb2.TaskRequest(client_id=7, task_ids=task_ids), timeout=5))

    assert error.value.code() == Code.INVALID_ARGUMENT


def test_a_20_mb_model_moves_both_ways_through_64_kib_chunks_under_a_128_kib_message_limit():
    chunk, limit = 64 << 10, 128 << 10  # one 20 MB message would break gRPC's limit: only chunks get through
    size = 5_000_000
    board = TaskBoard(PayloadAdmission(lambda client_id, payload: payload.parts["values"].clone()), chunk_size=chunk)
    params = torch.randn(size, generator=torch.Generator().manual_seed(0))
    board.publish(1, raw(params))
    server, port = serve(board, max_message_bytes=limit)
    task_id = board.post(Task("train", 1, 4, seed=0))
    update = torch.randn(size, generator=torch.Generator().manual_seed(1))
    try:
        with FederationClient(f"127.0.0.1:{port}", chunk_size=chunk, max_message_bytes=limit) as client:
            fetched = client.fetch_params(1, 4).parts["values"]
            client.pull_task(4, task_id)
            client.push_result(task_id, result(4, update=raw(update)))
        received = board.take(task_id, timeout=30).update
    finally:
        server.stop(None)

    assert torch.equal(fetched, params) and torch.equal(received, update)
