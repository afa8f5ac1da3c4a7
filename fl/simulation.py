"""`run_simulation`: data first, then Ray (or not), then rounds with progress, metrics and the final model."""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.console import Console
from torch import Tensor, nn

from fl.config import ConfigError, DevicesConfig, RunConfig, TransportConfig, parse_listen, read_secret, to_dict
from fl.gossip_async import in_process_run
from fl.gossip_hosts import HostLink, LocalHosts
from fl.gossip_sim import GossipRun, GossipSetup, Hosts, gossip_setup
from fl.grpc_channel import GrpcChannel, GrpcSettings
from fl.models import ModelFn
from fl.node import Security
from fl.params import ParamSpec
from fl.pool import LocalPool
from fl.progress import RoundProgress, summary_table
from fl.deploy import RemotePool
from fl.run_dir import RunWriter, to_toml
from fl.scenario import build_data, build_model_fn
from fl.seeding import AVAILABILITY, DEVICES, derive_rng, derive_seed
from fl.server import ChannelFactory, Server, ServerSetup
from fl.worker import Worker
from simulations.availability import availability_probabilities
from simulations.federated_data import FederatedData
from simulations.profiles import sample_profiles
from strategies.registry import kind, strategy_config
from transport.grpc_common import ServerLimits
from transport.inprocess import InProcessChannel


@dataclass
class SimulationResult:
    global_params: Tensor
    spec: ParamSpec
    history: list[dict[str, Any]]
    run_dir: Path | None
    startup_seconds: float  # data, model, Ray and actors: everything before round 1
    round_seconds: list[float]  # each round as the caller saw it, actor round trips included
    events: list[tuple[int, float, str, int]]  # the virtual clock's (round, time, kind, client id), in order

    def load_into(self, module: nn.Module) -> nn.Module:
        """Copy the final global parameters into a fresh model of the same architecture."""
        self.spec.load(module, self.global_params)
        return module


def server_setup(config: RunConfig, data: FederatedData, model_fn: ModelFn) -> ServerSetup:
    """Everything the server needs from a config, with the strategy resolved here (so plug-ins work in Ray)."""
    sampling = config.sampling
    availability = None
    if sampling.availability == "uniform":
        availability = availability_probabilities(data.num_clients, sampling.availability_low,
                                                  sampling.availability_high, derive_rng(config.seed, AVAILABILITY))
    devices = config.devices.spec()
    profiles = sample_profiles(devices, data.num_clients, derive_seed(config.seed, DEVICES)) if devices else None
    return ServerSetup(
        model_fn=model_fn, data=data, strategy=strategy_config(config.strategy.name, config.strategy.options),
        train_config=config.client, seed=config.seed, per_round=sampling.per_round, availability=availability,
        max_update_norm=config.security.max_update_norm,
        eval_every=config.eval.every, federated_eval_every=config.eval.federated_every,
        federated_eval_clients=config.eval.federated_clients, device=config.runtime.device,
        threads=config.runtime.threads_per_worker, uplink=config.transport.uplink, downlink=config.transport.downlink,
        devices=profiles, deadline=sampling.deadline, over_select=sampling.over_select,
        max_virtual_seconds=config.max_virtual_seconds,
    )


def grpc_settings(transport: TransportConfig) -> GrpcSettings:
    secret = read_secret(transport.auth_secret_file) if transport.auth_secret_file else None
    limits = ServerLimits(idle_seconds=transport.idle_seconds, calls_per_client=transport.calls_per_client)
    return GrpcSettings(transport.listen, transport.chunk_bytes, transport.max_message_bytes, transport.timeout_seconds,
                        transport.tls_cert, transport.tls_key, transport.tls_root_cert, secret, limits)


def hosts_factory(config: RunConfig) -> Callable[[GossipSetup], Hosts]:
    """Where a decentralized run's nodes live when their messages travel over gRPC: one host in this process (the
    local backend) or one per Ray worker, listening on `transport.listen`'s host with its TLS and tokens."""
    transport = config.transport
    settings = grpc_settings(transport)
    security = Security(transport.tls_cert, transport.tls_key, transport.tls_root_cert, settings.auth_secret)
    link = HostLink(transport.listen.rsplit(":", 1)[0], security, transport.chunk_bytes, transport.timeout_seconds,
                    settings.limits)
    if config.runtime.backend == "local":
        return functools.partial(LocalHosts, link=link)
    if config.runtime.address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")  # as `start_server` does
    from fl.ray_runtime import RayHosts

    return functools.partial(RayHosts, runtime=config.runtime, link=link)


def channel_factory(config: RunConfig) -> ChannelFactory | None:
    """The configured channel's factory; None for the backend's own direct channel."""
    if config.transport.channel == "grpc":
        return functools.partial(GrpcChannel, grpc_settings(config.transport))
    return InProcessChannel if config.runtime.backend == "local" else None


@contextmanager
def start_server(config: RunConfig, setup: Any, host: type = Server) -> Iterator[Callable[..., Any]]:
    """Yield `call(method, *args)` on a server running in-process or as a Ray actor. `host`: the class that runs
    the rounds, `host(setup, make_channel, make_pool)` (a decentralized run's `GossipRun` takes a `GossipSetup`)."""
    make_channel = channel_factory(config)
    if config.runtime.backend == "deploy":
        yield from _deployed_server(config, setup)
        return
    if config.runtime.backend == "local":
        with _calling(host(setup, make_channel, lambda ws, endpoint: LocalPool(Worker(ws, endpoint)))) as call:
            yield call
        return
    if config.runtime.address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")  # a cluster must see this node's address
    from fl.ray_runtime import start_ray_server

    with start_ray_server(config.runtime, setup, make_channel, host) as call:
        yield call


@contextmanager
def _calling(server: Any) -> Iterator[Callable[..., Any]]:
    """`call(method, *args)` on a server in this process, closed afterwards."""
    try:
        yield lambda method, *args: getattr(server, method)(*args)
    finally:
        server.close()


def deployed_server(config: RunConfig, setup: ServerSetup) -> Server:
    """The server of a deployment (`fl server`), listening on `transport.listen`. Joining clients receive the
    configuration without the server's own files (certificate, key, secret, device tables)."""
    private = {"tls_cert": "", "tls_key": "", "tls_root_cert": "", "auth_secret_file": ""}
    shared = dataclasses.replace(config, transport=dataclasses.replace(config.transport, **private),
                                 devices=DevicesConfig())  # its files stay here, and real clients need none
    make_channel = functools.partial(GrpcChannel, grpc_settings(config.transport), deployed=True,
                                     welcome=to_toml(to_dict(shared)))
    # Real clients keep their own state and take real time: the virtual clock's profiles do not apply.
    setup = dataclasses.replace(setup, clients_keep_state=True, devices=None, deadline=0.0, over_select=1.0)
    return Server(setup, make_channel, lambda worker_setup, endpoint: RemotePool())


def _deployed_server(config: RunConfig, setup: ServerSetup) -> Iterator[Callable[..., Any]]:
    """`deployed_server`, waiting for `sampling.per_round` clients to join before round 1."""
    server = deployed_server(config, setup)
    try:
        print(f"fl server: listening on {server.channel.address}; waiting for {config.sampling.per_round} clients",
              file=sys.stderr, flush=True)
        server.wait_for_clients(config.sampling.per_round, config.transport.timeout_seconds)
        yield lambda method, *args: getattr(server, method)(*args)
    except BaseException as error:  # the clients hear why the run stopped
        server.close(abort_reason=_abort_reason(error))
        raise
    server.close()


def _abort_reason(error: BaseException) -> str:
    if not isinstance(error, Exception):  # Ctrl-C, SIGTERM
        return "the server was interrupted"
    return f"{type(error).__name__}: {error}".splitlines()[0]


@contextmanager
def _start(config: RunConfig, data: FederatedData, model_fn: ModelFn) -> Iterator[Callable[..., Any]]:
    """`call(method, *args)` on what runs the rounds: a server, or a decentralized run. Synchronous gossip on the
    gRPC channel keeps its nodes on hosts (this process, or one Ray actor per worker) that send each other their
    messages over gRPC; on Ray's direct channel its nodes train as tasks on the pool and mix in a Ray actor; with the
    local backend and the direct channel, and for asynchronous gossip, its nodes train in this process."""
    if kind(config.strategy.name) == "decentralized":
        setup = gossip_setup(config, data, model_fn)
        in_process = config.runtime.backend == "local" and config.transport.channel == "direct"
        if in_process or getattr(type(setup.strategy), "asynchronous", False):
            with _calling(in_process_run(setup, config.devices.spec())) as call:
                yield call
            return
        if config.transport.channel == "grpc":
            with _calling(GossipRun(setup, make_hosts=hosts_factory(config))) as call:
                yield call
            return
        with start_server(config, setup, GossipRun) as call:
            yield call
        return
    with start_server(config, server_setup(config, data, model_fn)) as call:
        yield call


def preflight(config: RunConfig, write: bool) -> None:
    """What the configuration alone cannot tell, checked before data, Ray or a run directory: that the run directory
    can be made, that CUDA is there when asked for, and that the server can listen where configured. ConfigError."""
    if write:
        check_output_dir(config.output_dir)
    runtime = config.runtime
    if runtime.device == "cuda" and not runtime.address and not torch.cuda.is_available():
        raise ConfigError("runtime.device = 'cuda', but this machine has no CUDA device (allowed here: auto, cpu)")
    if config.transport.channel == "grpc" and not runtime.address:
        check_listen(config.transport.listen, decentralized=kind(config.strategy.name) == "decentralized")


def check_output_dir(output_dir: str) -> None:
    """`output_dir` is a directory, or can be made, where this process may write."""
    path = Path(output_dir)
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise ConfigError(f"output_dir = {output_dir!r}: {str(existing)!r} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir = {output_dir!r}: this process may not write in {str(existing)!r}")


def check_listen(listen: str, decentralized: bool) -> None:
    """Bind `transport.listen` once and let it go: a host that is not this machine's, or a port in use, is refused
    before anything starts. Gossip node hosts listen on its host only, on ports the OS picks."""
    host, port = parse_listen(listen)
    try:
        family, socktype, protocol, _, address = socket.getaddrinfo(host, 0 if decentralized else port,
                                                                     type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, socktype, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: a closing socket is no obstacle
            probe.bind(address)
    except OSError as error:
        raise ConfigError(f"transport.listen = {listen!r}: cannot listen there ({error.strerror or error}); allowed: "
                          f"an address of this machine and a free port (0: the OS picks)") from None


def run_simulation(
    config: RunConfig,
    *,
    data: FederatedData | None = None,
    model_fn: ModelFn | None = None,
    write: bool = True,
    show_progress: bool = True,
    console: Console | None = None,
) -> SimulationResult:
    """Run `config.rounds` synchronous rounds (or asynchronous versions), stopping early at `max_virtual_seconds`.
    `data` and `model_fn` replace the configured ones when given."""
    start = time.perf_counter()
    preflight(config, write)
    data = data if data is not None else build_data(config.data, config.seed)  # before Ray starts
    if config.sampling.per_round > data.num_clients:
        raise ValueError(f"sampling.per_round = {config.sampling.per_round} exceeds the {data.num_clients} clients")
    model_fn = model_fn or build_model_fn(config.model, data)
    console = console or Console(stderr=True, quiet=not show_progress)
    history: list[dict[str, Any]] = []
    round_seconds: list[float] = []
    writer: RunWriter | None = None
    try:
        with _start(config, data, model_fn) as call:
            startup = time.perf_counter() - start
            writer = RunWriter(config.output_dir, config.name, to_dict(config)) if write else None  # once it runs
            if kind(config.strategy.name) == "decentralized":
                console.print(f"{config.topology.name} graph: spectral gap {call('get_spectral_gap'):.4g}")
            with RoundProgress(config.rounds, config.name, console) as progress:
                for round in range(1, config.rounds + 1):
                    round_start = time.perf_counter()
                    metrics = call("run_round", round, round == config.rounds)
                    round_seconds.append(time.perf_counter() - round_start)
                    history.append(metrics)
                    progress.update(metrics)
                    if writer:
                        writer.write_round(metrics)
                    if metrics.get("ended"):  # the clock reached max_virtual_seconds, or nothing is left to do
                        break
            global_params, spec, events = call("get_global"), call("get_spec"), call("get_events")
            staleness = call("get_staleness")
            edges = call("get_edge_bytes") if kind(config.strategy.name) == "decentralized" else {}
        if writer:
            if edges:
                writer.write_json("edges.json", edges)
            writer.write_model(spec, global_params)
            if config.devices.spec() or staleness:
                writer.write_events(events)
            if staleness:
                writer.write_staleness(staleness)
                from fl.plot import plot_staleness  # matplotlib only when a run has a histogram to draw

                plot_staleness(staleness, writer.path / "staleness.png")
    finally:
        if writer:
            writer.close()
    console.print(summary_table(history, writer.path if writer else None, time.perf_counter() - start))
    return SimulationResult(global_params, spec, history, writer.path if writer else None, startup, round_seconds,
                            events)
