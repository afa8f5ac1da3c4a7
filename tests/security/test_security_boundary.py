"""The server boundary, item by item, as a hostile client would try it: each bad call is refused with a clear status,
the server's snapshot is unchanged, and the honest clients then finish with the parameters of a run never attacked."""

from __future__ import annotations

import dataclasses
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import grpc
import pytest
import torch

from fl.cli import main
from fl.pool import LocalPool
from fl.scenario import build_data, build_model_fn
from fl.server import Server
from fl.simulation import server_setup
from fl.worker import Worker
from tests.federation_harness import (
    ManualClient, assert_same, close_deployment, deploy_config, deployed_server, honest_final_params, play_round,
    running_round, snapshot,
)
from tests.grpc_helpers import PayloadAdmission, refusal
from transport import framing
from transport.auth import WORKER, auth_metadata, client_token, worker_token
from transport.board import TaskBoard
from transport.grpc_client import FederationClient
from transport.grpc_common import ListenError
from transport.grpc_server import serve
from transport.channel import UpdateRefused
from transport.inprocess import InProcessChannel
from transport.messages import TRAIN, Result, Task
from transport.proto import fl_pb2

Code = grpc.StatusCode
ROUNDS = 2
SECRET = b"server secret"


@pytest.fixture(scope="module")
def honest_params(tmp_path_factory) -> torch.Tensor:
    """The final parameters of the deployment when nobody attacks it."""
    return honest_final_params(deploy_config(tmp_path_factory.mktemp("honest")), ROUNDS)


@pytest.fixture
def deployment(tmp_path):
    """A fresh deployed server with its three honest clients joined; yields (server, clients)."""
    server = deployed_server(deploy_config(tmp_path))
    clients = [ManualClient(server.channel.address, i) for i in range(3)]
    yield server, clients
    close_deployment(server, clients)


def finish(server, clients, honest_params: torch.Tensor, first_round: int = 2) -> None:
    """The honest clients play the remaining rounds and end where a run never attacked ends."""
    for round in range(first_round, ROUNDS + 1):
        play_round(server, round, clients)
    assert torch.equal(server.global_params, honest_params)


def refused_unchanged(server, code: grpc.StatusCode, call, *args) -> str:
    """`call(*args)` is refused with `code` and leaves the server's snapshot as it was; returns the details."""
    before = snapshot(server)
    error = refusal(call, *args)
    assert error.code() == code, error.details()
    assert_same(before, snapshot(server))
    return error.details()


# 1. Client ids outside the federation.

@pytest.mark.parametrize("client_id", [-1, -5, 3, 2**40])
def test_a_client_id_outside_the_federation_is_refused_everywhere(deployment, honest_params, client_id) -> None:
    server, clients = deployment
    with FederationClient(server.channel.address, timeout_seconds=10) as stranger:
        details = refused_unchanged(server, Code.INVALID_ARGUMENT, stranger.join, client_id)
        refused_unchanged(server, Code.INVALID_ARGUMENT, stranger.pull_task, client_id)
        refused_unchanged(server, Code.INVALID_ARGUMENT, stranger.fetch_params, 1, client_id)

    assert "outside 0..2" in details
    finish(server, clients, honest_params, first_round=1)


# 2. Results that lie about their shape or content.

def _tensors(result: Result, **tensors) -> dict:
    return {**result.tensors, **tensors}


BAD_RESULTS = {
    "negative num_samples": lambda r: dict(num_samples=-1),
    "zero num_samples": lambda r: dict(num_samples=0),
    "huge num_samples": lambda r: dict(num_samples=2**62),
    "another size": lambda r: dict(num_samples=r.num_samples + 1),
    "no loss": lambda r: dict(metrics={k: v for k, v in r.metrics.items() if k != "loss"}),
    "extra metric": lambda r: dict(metrics={**r.metrics, "bonus": 1.0}),
    "no delta_c": lambda r: dict(tensors={}),
    "extra tensor": lambda r: dict(tensors=_tensors(r, extra=torch.zeros(3))),
    "renamed delta_c": lambda r: dict(tensors={"delta": r.tensors["delta_c"]}),
    "delta_c shape": lambda r: dict(tensors={"delta_c": r.tensors["delta_c"][:-1]}),
    "delta_c dtype": lambda r: dict(tensors={"delta_c": r.tensors["delta_c"].double()}),
    "state from a deployed client": lambda r: dict(state={"c": r.tensors["delta_c"]}),
    "update shape": lambda r: dict(update=dataclasses.replace(r.update, shape=(r.update.shape[0] + 1,))),
    "update dtype": lambda r: dict(update=dataclasses.replace(r.update, dtype=torch.float64)),
    "update codec": lambda r: dict(update=dataclasses.replace(r.update, codec="identity")),
    "no update": lambda r: dict(update=None),
}
# Lies in the values of a well-formed result are refused too, but they fail the task (tests/security/
# test_poisoned_updates.py): one client's lie must not stall a round.
VALUE_LIES = {
    "NaN loss": lambda r: dict(metrics={**r.metrics, "loss": float("nan")}),
    "Inf steps": lambda r: dict(metrics={**r.metrics, "steps": float("inf")}),
    "delta_c NaN": lambda r: dict(tensors={"delta_c": torch.full_like(r.tensors["delta_c"], float("nan"))}),
}


def test_every_lying_result_is_refused_over_grpc_and_the_run_ends_as_if_never_attacked(deployment,
                                                                                      honest_params) -> None:
    server, clients = deployment
    with running_round(server, 1):
        assignments = [client.pull() for client in clients]
        honest = [client.compute(a) for client, a in zip(clients, assignments)]
        for name, change in BAD_RESULTS.items():
            bad = dataclasses.replace(honest[0], **{"state": {}, **change(honest[0])})  # a client keeps its state
            details = refused_unchanged(server, Code.INVALID_ARGUMENT, clients[0].connection.push_result,
                                        assignments[0].task_id, bad)
            assert f"task {assignments[0].task_id}" in details, (name, details)
        for client, result in zip(clients, honest):
            client.send(result)
    finish(server, clients, honest_params)


def test_the_validation_step_refuses_the_same_results_on_the_direct_channel(tmp_path) -> None:
    """The in-process channel (and Ray's, which is the same channel) passes results through the same admission."""
    config = deploy_config(tmp_path, 'runtime.backend="local"', 'transport.channel="direct"')
    data = build_data(config.data, config.seed)
    server = Server(server_setup(config, data, build_model_fn(config.model, data)), InProcessChannel,
                    lambda setup, endpoint: LocalPool(Worker(setup, endpoint)))
    task = Task(TRAIN, server._publish(), 0, seed=1, tensors={"c": torch.zeros(server.spec.num_trainable)})
    for name, change in BAD_RESULTS.items():
        if name == "state from a deployed client":
            continue  # a simulation carries each client's state with its result
        receipt = server.pool.worker.run(server.channel.post(task))
        server.channel.traffic.take()
        before = direct_snapshot(server)
        with pytest.raises(UpdateRefused, match="client 0: the server refused the result"):
            server.channel.receive(dataclasses.replace(receipt, **change(receipt)))
        assert_same(before, direct_snapshot(server))

    assert server.channel.receive(receipt).update.shape == (server.spec.num_params,)  # the honest one is admitted
    assert 0 in server.decoder.staged  # written when its round commits


def direct_snapshot(server: Server) -> dict:
    """What a result could change on a simulation server: parameters, client state, decoder state, traffic."""
    copy = lambda states: {c: {k: v.clone() for k, v in s.items()} for c, s in states.items()}  # noqa: E731
    return {"global": server.global_params.clone(), "version": server.version, "store": copy(server.store._states),
            "decoder": copy(server.decoder.states),
            "traffic": (dict(server.channel.traffic.down), dict(server.channel.traffic.up))}


# 3. Sizes announced before the data.

def test_a_header_announcing_3_gib_is_refused_before_anything_is_allocated(deployment, honest_params) -> None:
    server, clients = deployment
    with running_round(server, 1):
        assignments = [client.pull() for client in clients]
        honest = [client.compute(a) for client, a in zip(clients, assignments)]
        header = fl_pb2.Frame(result=fl_pb2.Result(kind="train", version=1, task_id=assignments[0].task_id,
                                                   client_id=0, num_samples=honest[0].num_samples))
        header.result.update.codec, header.result.update.dtype = "ef21(topk)", "float32"
        header.result.update.shape.append(server.spec.num_params)
        header.result.update.parts.add(name="values", dtype="float32", shape=[3 << 28], num_bytes=3 << 30)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        push = clients[0].connection._stub.PushResult
        details = refused_unchanged(server, Code.INVALID_ARGUMENT, lambda: push(iter([header]), timeout=10,
                                                                                metadata=clients[0].connection._metadata(0)))
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
        for client, result in zip(clients, honest):
            client.send(result)

    assert "more than the limit" in details and grown_mb < 256
    assert server.channel.board.upload_limit() < 64 * server.spec.num_params  # the model, the codec, delta_c
    finish(server, clients, honest_params)


def test_buffers_grow_only_with_the_data_received() -> None:
    header = fl_pb2.Frame(result=fl_pb2.Result())
    header.result.tensors.add(name="big", dtype="uint8", shape=[1 << 30], num_bytes=1 << 30)
    reader = framing.PartsReader(header, max_bytes=1 << 31)
    reader.feed(fl_pb2.Frame(data=b"x" * 1000))

    assert sum(len(buffer) for buffer in reader.streamed) == 1000 and reader.remaining == (1 << 30) - 1000
    with pytest.raises(ValueError, match="more than the limit"):
        framing.PartsReader(header, max_bytes=(1 << 30) - 1)


# 4. Idle and slow peers.

def test_idle_streams_and_long_polls_starve_no_honest_client(tmp_path, honest_params) -> None:
    """64 result streams that send nothing are open while the clients join and long-poll, then play both rounds,
    as fast as without them; the silent streams are cancelled after `idle_seconds`."""
    server = deployed_server(deploy_config(tmp_path, "transport.idle_seconds=1.5"))
    silence = threading.Event()

    def nothing() -> Iterator[bytes]:
        silence.wait(30)
        yield from ()

    attacker = grpc.insecure_channel(server.channel.address)
    push = attacker.stream_unary("/fl.Federation/PushResult")
    idle = [push.future(nothing(), timeout=30) for _ in range(64)]
    start = time.perf_counter()
    clients = [ManualClient(server.channel.address, i) for i in range(3)]
    join_seconds = time.perf_counter() - start
    polls = [ThreadPoolExecutor(3).submit(client.connection.pull_task, client.client_id, 0, 30) for client in clients]
    try:
        start = time.perf_counter()
        for round in range(1, ROUNDS + 1):
            with running_round(server, round):
                for client, poll in zip(clients, polls if round == 1 else [None] * 3):
                    assignment = poll.result(timeout=10) if poll else client.pull()
                    client.send(client.compute(assignment))
        honest_seconds = time.perf_counter() - start
        codes = {future.exception(timeout=10).code() for future in idle}
    finally:
        silence.set()
        attacker.close()
        close_deployment(server, clients)

    assert join_seconds < 2 and honest_seconds < 10 and codes == {Code.DEADLINE_EXCEEDED}
    assert torch.equal(server.global_params, honest_params)


# 5. One live session per client id.

def test_a_second_process_with_the_same_client_id_is_refused(deployment, honest_params) -> None:
    server, clients = deployment
    with FederationClient(server.channel.address, client_id=0, timeout_seconds=10) as twin:
        details = refused_unchanged(server, Code.ALREADY_EXISTS, twin.join, 0)
        refused_unchanged(server, Code.FAILED_PRECONDITION, twin.pull_task, 0)  # no session: join first
    assert "live session" in details
    finish(server, clients, honest_params, first_round=1)


def test_a_replacing_join_ends_the_old_session_takes_its_tasks_and_resets_its_state(deployment) -> None:
    server, clients = deployment
    play_round(server, 1, clients)
    assert 0 in server.decoder.states
    with running_round(server, 2):
        pulled = clients[0].pull()
        stale = clients[0].compute(pulled)
        replacement = ManualClient(server.channel.address, 0, replace=True)
        assert 0 not in server.decoder.states  # the new process starts without the old one's EF state
        refused = refusal(clients[0].connection.push_result, pulled.task_id, dataclasses.replace(stale, state={}))
        assert refused.code() == Code.FAILED_PRECONDITION and "replaced" in refused.details()
        again = replacement.pull()
        assert again.task_id == pulled.task_id  # the task the old session held goes to the new one
        replacement.send(replacement.compute(again))
        for client in clients[1:]:
            client.send(client.compute(client.pull()))
    clients[0] = replacement
    assert server.version == 2 and 0 in server.decoder.states


# 6. A busy port.

def test_a_second_server_on_a_busy_port_fails_with_a_clear_error(tmp_path) -> None:
    board = TaskBoard(PayloadAdmission())
    first, port = serve(board)
    try:
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(TaskBoard(PayloadAdmission()), f"127.0.0.1:{port}")
        config = tmp_path / "c.toml"
        config.write_text("rounds = 1\n[data]\nnum_clients = 3\n[sampling]\nper_round = 3\n")
        code = main(["server", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--quiet",
                     "--set", f'output_dir="{tmp_path}"'])
    finally:
        first.stop(None)
    assert code == 2  # refused before anything starts, as a bad transport.listen


# 7. No token acts for every client.

def test_the_worker_credential_is_not_any_clients_token_and_a_deployment_refuses_it(tmp_path, capsys) -> None:
    assert worker_token(SECRET) not in {client_token(SECRET, i) for i in range(1000)}
    with pytest.raises(ValueError, match=">= 0"):
        client_token(SECRET, WORKER)
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    assert main(["token", "--secret-file", str(secret_file), "--client-id", "-1"]) == 2
    assert "no token acts for every client" in capsys.readouterr().err

    server = deployed_server(deploy_config(tmp_path, f'transport.auth_secret_file="{secret_file}"'))
    try:
        with FederationClient(server.channel.address, auth_secret=SECRET, timeout_seconds=10) as worker:
            as_worker = auth_metadata(WORKER, worker_token(SECRET))
            join = lambda: worker._stub.Join(fl_pb2.JoinRequest(client_id=0), metadata=as_worker)  # noqa: E731
            assert "deployed" in refused_unchanged(server, Code.PERMISSION_DENIED, join)
            assert "deployed" in refused_unchanged(server, Code.PERMISSION_DENIED, worker.pull_tasks, [1])
        with FederationClient(server.channel.address, client_id=1, token=client_token(SECRET, 1),
                              timeout_seconds=10) as client:
            assert client.join(1).session
            server.channel.board.close()
            assert client.pull_task(1) == "done"
    finally:
        server.close()


# 8. Undecodable requests.

@pytest.mark.parametrize("method", ["Join", "PullTask", "FetchParams"])
def test_undecodable_requests_are_invalid_arguments(deployment, honest_params, method: str) -> None:
    server, clients = deployment
    with grpc.insecure_channel(server.channel.address) as channel:
        call = (channel.unary_unary if method == "Join" else channel.unary_stream)(f"/fl.Federation/{method}")
        read = (lambda: call(b"\xff\xff\xff", timeout=10)) if method == "Join" else \
            (lambda: list(call(b"\xff\xff\xff", timeout=10)))
        details = refused_unchanged(server, Code.INVALID_ARGUMENT, read)
    assert "undecodable" in details
    finish(server, clients, honest_params, first_round=1)
