"""Deployment without Ray: `fl server` waits for clients to join over gRPC, `fl client` trains one client.

The server runs the same Server, strategy and round loop as a simulation, with a pool whose tasks run in the client
processes; a client runs the same Worker and training loop, for its own id only, and keeps its state (control
variates, error-feedback residuals) on its own machine.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Iterator, Sequence

import grpc
from torch import Tensor

from fl.config import load_config_text
from fl.params import ParamSpec
from fl.pool import WorkerPool
from fl.scenario import build_data, build_model_fn
from fl.worker import Worker, WorkerSetup
from strategies.base import Federation
from strategies.registry import strategy_config
from transport.channel import Endpoint
from transport.codecs.base import Codec, State
from transport.codecs.registry import make_codec
from transport.downlink import Replica
from transport.grpc_client import DONE, WAIT, Assignment, FederationClient
from transport.messages import DIVERGED, Result, Task

POLL_SECONDS = 10.0


class RemotePool(WorkerPool):
    """Tasks run in client processes that pull them over gRPC; the receipt of a task is its id."""

    def run(self, envelopes: Sequence[Any], costs: Sequence[float]) -> Iterator[Any]:
        return (task_id for task_id, _client_id in envelopes)


class ClientEndpoint(Endpoint):
    """One deployed client's side of the channel; its state never leaves this process."""

    def __init__(self, connection: FederationClient, downlink: Codec) -> None:
        self.connection = connection
        self.replica = Replica(downlink)  # kept between tasks: later downloads are the changes since
        self.state: State = {}
        self._task_id = 0
        self.last_kind = ""  # of the last result sent

    def open(self, assignment: Assignment) -> tuple[Task, Tensor]:
        self._task_id = assignment.task_id
        params = self.connection.update_replica(self.replica, assignment.task.version)
        return dataclasses.replace(assignment.task, state=self.state), params

    def send(self, result: Result) -> int:
        if result.state:
            self.state = result.state
        self.last_kind = result.kind
        return self.connection.push_result(self._task_id, dataclasses.replace(result, state={}))


def client_worker(connection: FederationClient, client_id: int, replace: bool = False) -> Worker:
    """Join (`replace`: ending a live session of the same id), and build the worker (model, data, strategy hook,
    codec) from the configuration the server sends."""
    config = load_config_text(connection.join(client_id, wait_for_server=True, replace=replace).config)
    data = build_data(config.data, config.seed)
    if not 0 <= client_id < data.num_clients:
        raise ValueError(f"client id {client_id} is outside 0..{data.num_clients - 1}")
    model_fn = build_model_fn(config.model, data)
    spec = ParamSpec.from_module(model_fn())
    federation = Federation(data.num_clients, config.sampling.per_round, spec.num_params, spec.num_trainable,
                            spec.dtype, tuple(int(n) for n in data.train_sizes()))
    strategy = strategy_config(config.strategy.name, config.strategy.options).build(federation)
    setup = WorkerSetup(model_fn, data, config.client, strategy.client_algorithm, config.runtime.device,
                        config.runtime.threads_per_worker, config.transport.uplink, config.security.max_update_norm)
    return Worker(setup, ClientEndpoint(connection, make_codec(config.transport.downlink)))


def _withdrawn(error: grpc.RpcError) -> bool:
    """A refusal that means the server no longer wants the task: it withdrew it (too stale, or too late), or it
    forgot this client (which then joins again)."""
    return error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


def _forgotten(error: grpc.RpcError) -> bool:
    """The server ended this client's session (it presumed the client gone): join again."""
    return error.code() == grpc.StatusCode.FAILED_PRECONDITION and "has no session" in (error.details() or "")


def _pull(connection: FederationClient, client_id: int, log: Any) -> Any:
    """The client's next task, WAIT or DONE; joins again when the server has forgotten the client."""
    try:
        return connection.pull_task(client_id, wait_seconds=POLL_SECONDS)
    except grpc.RpcError as error:
        if not _forgotten(error):
            raise
    print(f"client {client_id}: the server had presumed this client gone; joining again", file=log, flush=True)
    connection.join(client_id)
    return WAIT


def run_client(connection: FederationClient, client_id: int, log: Any = sys.stderr, replace: bool = False,
               delay: float = 0.0) -> int:
    """Serve tasks for `client_id` until the server says the run is over; returns how many tasks ran. `delay`
    seconds of waiting before each task emulate a slower device. A task whose training diverged is reported as
    such; a server that stopped the run with an error raises its ABORTED status."""
    worker = client_worker(connection, client_id, replace)
    print(f"client {client_id}: joined", file=log, flush=True)
    done = 0
    while (pulled := _pull(connection, client_id, log)) != DONE:
        if pulled == WAIT:
            continue
        start = time.perf_counter()
        if delay:
            time.sleep(delay)
        try:
            worker.run(pulled)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                print(f"client {client_id}: the server refused the result of task {pulled.task_id}: "
                      f"{error.details()}", file=log, flush=True)
                continue
            if not _withdrawn(error):
                raise
            print(f"client {client_id}: the server withdrew task {pulled.task_id} of version "
                  f"{pulled.task.version}: {error.details()}", file=log, flush=True)
            continue
        done += 1
        outcome = "diverged (reported to the server)" if worker.endpoint.last_kind == DIVERGED else "done"
        print(f"client {client_id}: {pulled.task.kind} task of version {pulled.task.version} {outcome} "
              f"in {time.perf_counter() - start:.2f} s", file=log, flush=True)
    print(f"client {client_id}: the server finished the run after {done} tasks", file=log, flush=True)
    return done
