"""A 3 GB model crosses the gRPC transport by the same chunked path as every other (slow: about 12 GB of memory)."""

from __future__ import annotations

import resource

import pytest
import torch

from tests.grpc_helpers import PayloadAdmission, raw
from transport.board import TaskBoard
from transport.codecs.base import Payload
from transport.grpc_client import FederationClient
from transport.grpc_server import serve
from transport.messages import TRAIN, Result, Task

NUM_FLOATS = 750_000_000  # 3.0 GB of float32, beyond protobuf's 2 GB message limit
CHUNK = 4 << 20


def decode_whole(client_id: int, payload: Payload) -> torch.Tensor:
    values = payload.parts["values"]
    if values.shape != (NUM_FLOATS,):
        raise ValueError(f"update shape {tuple(values.shape)}, expected ({NUM_FLOATS},)")
    return values


@pytest.mark.slow
def test_a_3_gb_model_goes_down_and_its_3_gb_update_comes_back_bit_for_bit() -> None:
    model = torch.arange(NUM_FLOATS, dtype=torch.int32).view(torch.float32)  # distinct finite bit patterns
    board = TaskBoard(PayloadAdmission(decode_whole), chunk_size=CHUNK)
    board.publish(1, raw(model))
    server, port = serve(board)
    client = FederationClient(f"127.0.0.1:{port}", chunk_size=CHUNK, timeout_seconds=600.0)
    try:
        task_id = board.post(Task(TRAIN, 1, client_id=0, seed=0))
        assignment = client.pull_task(0, task_id)
        downloaded = client.fetch_params(1, 0).parts["values"]
        assert torch.equal(downloaded, model)
        client.push_result(assignment.task_id, Result(TRAIN, 1, 0, 1, {}, update=raw(downloaded)))
        returned = board.take(task_id).update
    finally:
        client.close()
        server.stop(None)

    assert torch.equal(returned, model)
    down, up = board.traffic.take()
    assert down[0] > 4 * NUM_FLOATS and up[0] > 4 * NUM_FLOATS  # counted from the frames: the data and its headers
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")
