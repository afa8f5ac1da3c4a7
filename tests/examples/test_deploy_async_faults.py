"""An asynchronous deployment whose clients die or go quiet: their tasks are dropped, they are forgotten (and join
again if alive), and the server ends with a clear error when nobody is left; withdrawn tasks and aborted runs are
named as such to the clients."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from fl.deploy import _pull
from fl.errors import ClientsGone
from tests.federation_harness import ManualClient, close_deployment, deploy_config, deployed_server, running_round
from tests.grpc_helpers import refusal
from transport.grpc_client import WAIT

Code = grpc.StatusCode
TIMEOUT = 2


def async_deployment(tmp_path, timeout: float = TIMEOUT):
    config = deploy_config(tmp_path, 'strategy.name="fedasync"', "strategy.concurrency=3", 'transport.uplink="identity"',
                           f"transport.timeout_seconds={timeout}", "rounds=2")
    server = deployed_server(config)
    return server, [ManualClient(server.channel.address, i) for i in range(3)]


def test_an_asynchronous_server_whose_clients_all_died_ends_with_a_clear_error(tmp_path):
    # Prepare: three clients each take a task, then die
    server, clients = async_deployment(tmp_path)
    start = time.monotonic()
    with pytest.raises(ClientsGone, match=f"no client is left .* within {TIMEOUT} s"):
        with running_round(server, 1):
            for client in clients:
                client.pull()
                client.close()
    # Assert: dropped after the timeout, forgotten, and no rejoin within another timeout
    assert 2 * TIMEOUT <= time.monotonic() - start < 2 * TIMEOUT + 10
    assert server.channel.board.joined() == []
    server.close()


def test_a_dropped_client_is_forgotten_its_late_result_is_refused_and_it_joins_again(tmp_path):
    # Prepare: client 0 takes a task and goes quiet; client 1 keeps answering, a version each time
    server, clients = async_deployment(tmp_path, timeout=2 * TIMEOUT)  # room for client 1's slowest answer
    board = server.channel.board
    with running_round(server, 1):
        pulled = clients[0].pull()
        clients[1].send(clients[1].compute(clients[1].pull()))
    round, deadline = 1, time.monotonic() + 6 * TIMEOUT
    while 0 in board.joined() and time.monotonic() < deadline:
        round += 1
        with running_round(server, round):
            clients[1].send(clients[1].compute(clients[1].pull()))
    # Assert: client 0's task was dropped after the timeout, client 0 forgotten; it hears so and joins again
    assert 0 not in board.joined() and 1 in board.joined()
    late = clients[0].worker._execute(pulled.task, server.global_params)  # it can no longer fetch its version
    error = refusal(clients[0].connection.push_result, pulled.task_id, late)
    assert error.code() == Code.FAILED_PRECONDITION and "has no session" in error.details()
    log = io.StringIO()
    assert _pull(clients[0].connection, 0, log) == WAIT and "joining again" in log.getvalue()
    assert 0 in board.joined()
    clients[2].close()  # dropped and forgotten too: it never answered
    close_deployment(server, clients[:2])


def test_a_withdrawn_tasks_late_result_is_told_it_was_withdrawn(tmp_path):
    server, clients = async_deployment(tmp_path)
    board = server.channel.board
    with running_round(server, 1):
        pulled = [client.pull() for client in clients]
        late = clients[0].compute(pulled[0])
        board.cancel(pulled[0].task_id)
        error = refusal(clients[0].send, late)
        for client, assignment in zip(clients[1:], pulled[1:]):
            client.send(client.compute(assignment))
    assert error.code() == Code.FAILED_PRECONDITION and "was withdrawn" in error.details()
    close_deployment(server, clients)


def test_clients_hear_why_a_failed_server_stopped(tmp_path):
    # Prepare: every client waits in a long poll for its next task
    server, clients = async_deployment(tmp_path)
    with ThreadPoolExecutor(3) as pool:
        polls = [pool.submit(refusal, client.connection.pull_task, client.client_id, 0, 10.0) for client in clients]
        time.sleep(0.5)
        # Execute: the server's run fails
        start = time.monotonic()
        server.close(abort_reason="RuntimeError: the disk is full")
        errors = [poll.result(timeout=10) for poll in polls]
    # Assert: each hears it at once, with the reason
    assert time.monotonic() - start < 3
    assert {(e.code(), e.details()) for e in errors} == {
        (Code.ABORTED, "the server stopped the run: RuntimeError: the disk is full")}
    for client in clients:
        client.close()


def test_a_client_killed_mid_task_at_the_end_is_named_when_the_server_stops(tmp_path, capsys):
    # Prepare: client 0 takes a task and dies; clients 1 and 2 answer, which publishes the run's last version
    server, clients = async_deployment(tmp_path)
    with running_round(server, 1):
        clients[0].pull()
        clients[0].close()
        for client in clients[1:]:
            client.send(client.compute(client.pull()))
    # Execute: the run ends; the live clients hear it, the dead one never asks
    server.channel.board.close()
    for client in clients[1:]:
        assert client.connection.pull_task(client.client_id) == "done"
        client.close()
    server.close()
    # Assert
    assert f"clients 0 did not ask again within {TIMEOUT} s of the end (presumed gone)" in capsys.readouterr().err
