"""The gRPC board and servicer on 127.0.0.1: the task loop, traffic accounting, and every refusal."""

from __future__ import annotations

import re
import threading

import grpc
import pytest
import torch

from transport import framing, wire
from transport.codecs.base import Payload
from transport.grpc_client import DONE, WAIT, FederationClient
from tests.grpc_helpers import CHUNK, SIZE, Federation, raw, refusal, result
from transport.messages import Task

Code = grpc.StatusCode

def test_three_clients_join_pull_fetch_and_push(fed: Federation) -> None:
    task_ids = [fed.board.post(Task("train", 1, client_id, seed=client_id)) for client_id in (1, 2, 3)]
    errors: list[BaseException] = []

    def run_client(client_id: int) -> None:
        try:
            with FederationClient(fed.address, chunk_size=CHUNK, timeout_seconds=10) as client:
                assert client.join(client_id).version == 1
                assignment = client.pull_task(client_id, wait_seconds=5)
                params = client.fetch_params(assignment.task.version, client_id)
                update = raw(params.parts["values"] + assignment.task.seed)
                client.push_result(assignment.task_id, result(client_id, float(client_id), update=update))
        except BaseException as error:  # reported below, in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run_client, args=(client_id,)) for client_id in (3, 1, 2)]
    for thread in threads:
        thread.start()
    results = [fed.board.take(task_id, timeout=20) for task_id in task_ids]
    for thread in threads:
        thread.join(timeout=20)

    assert not errors
    assert [r.client_id for r in results] == [1, 2, 3]
    for client_id, got in zip((1, 2, 3), results):
        assert torch.equal(got.update, torch.arange(SIZE, dtype=torch.float32) + client_id)
        assert got.metrics == {"loss": client_id}


def test_traffic_counts_the_serialized_frames(fed: Federation) -> None:
    big = torch.randn(100_000)
    task = Task("train", 1, 4, seed=0, tensors={"control": big})
    task_id = fed.board.post(task)
    sent = result(4, tensors={"control": big * 2})

    fed.client.pull_task(4)
    fed.client.fetch_params(1, 4)
    fed.client.push_result(task_id, sent)

    params = wire.params_frame(wire.ParamsMessage(1, raw(torch.arange(SIZE, dtype=torch.float32))))
    down = [*framing.to_frames(*wire.task_frame(task, task_id), CHUNK), *framing.to_frames(*params, CHUNK)]
    up = list(framing.to_frames(*wire.result_frame(sent, task_id), CHUNK))
    assert len(down) > 5 and len(up) > 5  # several data frames each way
    assert fed.board.traffic.take() == ({4: sum(f.ByteSize() for f in down)}, {4: sum(f.ByteSize() for f in up)})


def test_pull_waits_for_a_task_then_signals_wait_and_done(fed: Federation) -> None:
    timer = threading.Timer(0.2, fed.board.post, [Task("train", 1, 5, seed=0)])
    timer.start()
    assignment = fed.client.pull_task(5, wait_seconds=5)
    timer.join(timeout=5)

    assert assignment.task.client_id == 5
    assert fed.client.pull_task(5, wait_seconds=0.05) == WAIT
    fed.board.close()
    assert fed.client.pull_task(5, wait_seconds=5) == DONE


def test_pull_and_fetch_refusals(fed: Federation) -> None:
    task_id = fed.board.post(Task("train", 1, 1, seed=0))

    assert refusal(fed.client.pull_task, 1, 999).code() == Code.NOT_FOUND
    assert refusal(fed.client.pull_task, 2, task_id).code() == Code.FAILED_PRECONDITION
    assert refusal(fed.client.fetch_params, 7, 1).code() == Code.NOT_FOUND
    assert fed.client.pull_task(1, task_id).task_id == task_id  # a task may be pulled again until answered


def test_take_times_out_without_a_result(fed: Federation) -> None:
    with pytest.raises(TimeoutError):
        fed.board.take(fed.board.post(Task("train", 1, 1, seed=0)), timeout=0.05)


def assert_board_works(fed: Federation, task_id: int, other_id: int) -> None:
    """The refused call changed nothing: no traffic, the same params, both tasks still answerable."""
    assert fed.board.traffic.take() == ({}, {})
    assert fed.board.version == 1
    assert torch.equal(fed.client.fetch_params(1, 1).parts["values"], torch.arange(SIZE, dtype=torch.float32))
    fed.client.push_result(task_id, result(1, 7.0))
    assert fed.board.take(task_id, timeout=5).metrics == {"loss": 7.0}
    assert fed.board.take(other_id, timeout=5).metrics == {"loss": 3.0}


NAN_TENSOR = {"c": torch.tensor([0.0, float("nan")])}
BAD_RESULTS = {
    "wrong shape": (dict(update=raw(torch.zeros(SIZE + 1))), Code.INVALID_ARGUMENT, "shape"),
    "wrong dtype": (dict(update=raw(torch.zeros(SIZE, dtype=torch.float64))), Code.INVALID_ARGUMENT, "dtype"),
    "NaN update": (dict(update=raw(torch.full((SIZE,), float("nan")))), Code.INVALID_ARGUMENT, "NaN"),
    "Inf update": (dict(update=raw(torch.full((SIZE,), float("-inf")))), Code.INVALID_ARGUMENT, "Inf"),
    "undecodable": (dict(update=Payload("topk", (SIZE,), torch.float32)), Code.INVALID_ARGUMENT, "decode"),
    "NaN tensor": (dict(tensors=NAN_TENSOR), Code.INVALID_ARGUMENT, r"tensors\['c'\] has NaN"),
    "Inf state": (dict(state={"s": torch.tensor([float("inf")])}), Code.INVALID_ARGUMENT, r"state\['s'\]"),
    "wrong client": (dict(client_id=2), Code.FAILED_PRECONDITION, "belongs to client 1"),
    "wrong version": (dict(version=0), Code.FAILED_PRECONDITION, "answers a task of 1"),
    "wrong kind": (dict(kind="evaluate"), Code.INVALID_ARGUMENT, "cannot answer"),
}


@pytest.mark.parametrize(("changes", "code", "message"), BAD_RESULTS.values(), ids=BAD_RESULTS)
def test_bad_results_are_refused_and_change_nothing(fed: Federation, changes: dict, code, message: str) -> None:
    task_id = fed.board.post(Task("train", 1, 1, seed=0))
    other_id = fed.board.post(Task("train", 1, 3, seed=0))
    fed.client.push_result(other_id, result(3, 3.0))
    fed.board.traffic.take()

    error = refusal(fed.client.push_result, task_id, result(**changes))

    assert error.code() == code
    assert re.search(message, error.details())
    assert_board_works(fed, task_id, other_id)


def test_an_unknown_task_is_not_found(fed: Federation) -> None:
    assert refusal(fed.client.push_result, 999, result()).code() == Code.NOT_FOUND


def test_a_result_for_an_old_version_is_refused(fed: Federation) -> None:
    task_id = fed.board.post(Task("train", 1, 1, seed=0))
    fed.board.publish(2, raw(torch.ones(SIZE)))

    error = refusal(fed.client.push_result, task_id, result())

    assert error.code() == Code.FAILED_PRECONDITION and "too old" in error.details()
    assert fed.board.version == 2 and fed.board.traffic.take() == ({}, {})
    assert torch.equal(fed.client.fetch_params(2, 1).parts["values"], torch.ones(SIZE))


def test_a_duplicate_result_is_refused_before_and_after_take(fed: Federation) -> None:
    task_id = fed.board.post(Task("train", 1, 1, seed=0))
    fed.client.push_result(task_id, result(value=1.0))

    assert refusal(fed.client.push_result, task_id, result(value=2.0)).code() == Code.FAILED_PRECONDITION
    assert fed.board.take(task_id, timeout=5).metrics == {"loss": 1.0}
    assert refusal(fed.client.push_result, task_id, result(value=2.0)).code() == Code.FAILED_PRECONDITION


def malformed_streams(task_id: int) -> dict[str, tuple[list[bytes], str]]:
    """Raw frame streams for task `task_id`, each with the refusal it earns."""
    header, *data = [f.SerializeToString() for f in framing.to_frames(*wire.result_frame(result(), task_id), 16)]
    task_header = next(framing.to_frames(*wire.task_frame(Task("train", 1, 1, 0), task_id), 16)).SerializeToString()
    return {
        "data before header": (data + [header], "data frame before the header"),
        "too few bytes": ([header] + data[:-1], "8 bytes short"),
        "too many bytes": ([header] + data + data[:1], "16 bytes more"),
        "task header": ([task_header] + data, "expected a result frame first, got task"),
        "undecodable": ([b"\xff\xff\xff\xff"], "undecodable frame"),
        "empty": ([], "got nothing"),
    }


@pytest.mark.parametrize("case", list(malformed_streams(1)))
def test_malformed_frame_streams_are_invalid(fed: Federation, case: str) -> None:
    task_id = fed.board.post(Task("train", 1, 1, seed=0))
    other_id = fed.board.post(Task("train", 1, 3, seed=0))
    fed.client.push_result(other_id, result(3, 3.0))
    fed.board.traffic.take()
    frames, message = malformed_streams(task_id)[case]

    with grpc.insecure_channel(fed.address) as channel:
        push_raw = channel.stream_unary("/fl.Federation/PushResult")  # no serializers: bytes as they are
        error = refusal(push_raw, iter(frames), 10)

    assert error.code() == Code.INVALID_ARGUMENT and message in error.details()
    assert_board_works(fed, task_id, other_id)
