"""Client tokens (HMAC of the client id) and TLS with a self-signed certificate for 127.0.0.1."""

from __future__ import annotations


import grpc
import pytest
import torch

from tests.grpc_helpers import CHUNK, SIZE, PayloadAdmission, raw, refusal, result
from transport.auth import authenticated_client, client_token
from transport.grpc_client import FederationClient
from transport.board import TaskBoard
from transport.grpc_server import serve
from transport.messages import Task

SECRET = b"server secret"
Code = grpc.StatusCode


@pytest.fixture
def secured():
    """A board with one task for client 1, served with tokens required; yields (board, address)."""
    board = TaskBoard(PayloadAdmission(), chunk_size=CHUNK)
    board.publish(1, raw(torch.zeros(SIZE)))
    board.post(Task("train", 1, 1, seed=0))
    server, port = serve(board, auth_secret=SECRET)
    yield board, f"127.0.0.1:{port}"
    server.stop(None)


def test_tokens_are_hmacs_of_the_client_id() -> None:
    token = client_token(SECRET, 1)

    assert len(token) == 64 and token != client_token(SECRET, 2) and token != client_token(b"other", 1)
    assert authenticated_client(SECRET, [("x-fl-client", "1"), ("x-fl-token", token)]) == 1
    assert authenticated_client(SECRET, [("x-fl-client", "2"), ("x-fl-token", token)]) is None
    assert authenticated_client(SECRET, [("x-fl-client", "one"), ("x-fl-token", token)]) is None
    assert authenticated_client(SECRET, []) is None


def test_the_right_token_is_accepted(secured) -> None:
    board, address = secured
    with FederationClient(address, client_id=1, token=client_token(SECRET, 1), timeout_seconds=10) as client:
        client.join(1)
        assignment = client.pull_task(1)
        client.fetch_params(1)
        client.push_result(assignment.task_id, result(1))

    assert board.take(assignment.task_id, timeout=5).client_id == 1


def test_a_worker_holding_the_secret_signs_for_each_client(secured) -> None:
    _, address = secured
    with FederationClient(address, auth_secret=SECRET, timeout_seconds=10) as worker:
        assert worker.join(1).version == 1 and worker.join(2).version == 1


@pytest.mark.parametrize("credentials", [dict(), dict(client_id=1, token="0" * 64),
                                         dict(client_id=1, token=client_token(b"guess", 1))])
def test_a_missing_or_wrong_token_is_unauthenticated(secured, credentials: dict) -> None:
    board, address = secured
    with FederationClient(address, timeout_seconds=10, **credentials) as client:
        assert refusal(client.join, 1).code() == Code.UNAUTHENTICATED
        assert refusal(client.pull_task, 1).code() == Code.UNAUTHENTICATED
        assert refusal(client.fetch_params, 1, 1).code() == Code.UNAUTHENTICATED
        assert refusal(client.push_result, 1, result(1)).code() == Code.UNAUTHENTICATED

    assert board.traffic.take() == ({}, {})


def test_a_token_acts_only_for_its_own_client(secured) -> None:
    _, address = secured
    with FederationClient(address, client_id=2, token=client_token(SECRET, 2), timeout_seconds=10) as client:
        assert refusal(client.pull_task, 1, 1).code() == Code.PERMISSION_DENIED
        assert refusal(client.fetch_params, 1, 1).code() == Code.PERMISSION_DENIED
        assert refusal(client.push_result, 1, result(1)).code() == Code.PERMISSION_DENIED


def test_tls_clients_work_and_plaintext_clients_fail(certificate: tuple[str, str]) -> None:
    board = TaskBoard(PayloadAdmission(), chunk_size=CHUNK)
    board.publish(1, raw(torch.arange(SIZE, dtype=torch.float32)))
    server, port = serve(board, tls=certificate)
    try:
        with FederationClient(f"127.0.0.1:{port}", root_cert_path=certificate[0], timeout_seconds=10) as client:
            fetched = client.fetch_params(1, 1)
        with FederationClient(f"127.0.0.1:{port}", timeout_seconds=3) as plaintext:
            error = refusal(plaintext.join, 1)
    finally:
        server.stop(None)

    assert torch.equal(fetched.parts["values"], torch.arange(SIZE, dtype=torch.float32))
    assert error.code() == Code.UNAVAILABLE
