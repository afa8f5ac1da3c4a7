"""A deployed federation server in the test's process, honest clients driven one step at a time, and snapshots of
everything a client's call could change, for the tests that attack the server boundary."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from fl.config import RunConfig
from fl.deploy import ClientEndpoint, client_worker
from fl.scenario import build_data, build_model_fn
from fl.server import Server
from fl import simulation
from fl.simulation import server_setup
from tests.conftest import small_config
from transport.grpc_client import Assignment, FederationClient
from transport.messages import Result

NUM_CLIENTS = 3
SETTINGS = (f"data.num_clients={NUM_CLIENTS}", f"sampling.per_round={NUM_CLIENTS}", 'strategy.name="scaffold"',
            'transport.uplink="ef21(topk:ratio=0.1)"', 'runtime.backend="deploy"', "transport.timeout_seconds=20")


def deploy_config(tmp_path, *overrides: str) -> RunConfig:
    """Three clients that all train every round, SCAFFOLD (it expects a `delta_c` tensor) and an EF21 uplink (the
    server keeps a decoder state per client)."""
    return small_config(tmp_path, *SETTINGS, *overrides)


def deployed_server(config: RunConfig) -> Server:
    """The server `fl server` runs, listening on 127.0.0.1 at a port the OS picks, without Ray."""
    data = build_data(config.data, config.seed)
    return simulation.deployed_server(config, server_setup(config, data, build_model_fn(config.model, data)))


class ManualClient:
    """An honest deployed client whose steps the test takes: pull a task, compute its result, send it."""

    def __init__(self, address: str, client_id: int, token: str | None = None, replace: bool = False) -> None:
        self.client_id = client_id
        self.connection = FederationClient(address, client_id=client_id, token=token, timeout_seconds=20)
        self.worker = client_worker(self.connection, client_id, replace)
        self.endpoint: ClientEndpoint = self.worker.endpoint

    def pull(self) -> Assignment:
        pulled = self.connection.pull_task(self.client_id, wait_seconds=10)
        assert isinstance(pulled, Assignment), pulled
        return pulled

    def compute(self, assignment: Assignment) -> Result:
        """The honest result of a pulled task (its update encoded), not yet sent."""
        task, params = self.endpoint.open(assignment)
        return self.worker._execute(task, params)

    def send(self, result: Result) -> int:
        return self.endpoint.send(result)

    def close(self) -> None:
        self.connection.close()


def close_deployment(server: Server, clients: list[ManualClient]) -> None:
    """End the run as `fl server` does: every client hears DONE, then the server stops."""
    server.channel.board.close()
    try:
        for client in clients:
            assert client.connection.pull_task(client.client_id) == "done"
    finally:
        for client in clients:
            client.close()
        server.close()


@contextmanager
def running_round(server: Server, round: int) -> Iterator[dict[str, Any]]:
    """Run `server.run_round(round)` in a thread while the test plays the clients; yields the round's outcome
    ({"metrics": ...} once the round ends, or {"error": ...})."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["metrics"] = server.run_round(round)
        except BaseException as error:  # reported to the test below
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive(), f"round {round} did not end"
    if "error" in outcome:
        raise outcome["error"]


def play_round(server: Server, round: int, clients: list[ManualClient]) -> None:
    """One honest round: every client pulls, trains and sends."""
    with running_round(server, round):
        for client in clients:
            client.send(client.compute(client.pull()))


def honest_final_params(config: RunConfig, rounds: int) -> torch.Tensor:
    """The global parameters after `rounds` honest rounds of a fresh deployment of `config`: what an attacked run
    must still end with."""
    server = deployed_server(config)
    clients = [ManualClient(server.channel.address, i) for i in range(config.data.num_clients)]
    try:
        for round in range(1, rounds + 1):
            play_round(server, round, clients)
        return server.global_params.clone()
    finally:
        close_deployment(server, clients)


def snapshot(server: Server) -> dict[str, Any]:
    """Global parameters and version, the board (tasks, queues, sessions, traffic, downloads), the client state
    store and the uplink decoder's state: everything a client's call could change."""
    copy = lambda states: {c: {k: v.clone() for k, v in s.items()} for c, s in states.items()}  # noqa: E731
    return {"global": server.global_params.clone(), "version": server.version,
            "board": server.channel.board.snapshot(), "store": copy(server.store._states),
            "decoder": copy(server.decoder.states)}


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Equal snapshots: tensors bit for bit, everything else with ==."""
    assert before.keys() == after.keys()
    for key in before:
        _assert_equal(before[key], after[key], key)


def _assert_equal(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a.keys(), getattr(b, "keys", lambda: b)())
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    else:
        assert a == b, (where, a, b)
