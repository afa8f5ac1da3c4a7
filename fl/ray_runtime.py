"""Ray: a lean start, the Ray-object channel, and a pool of worker actors."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

# Ray decides at import whether it may bind to the network; this switch (named for macOS and Windows) keeps a local
# instance on 127.0.0.1. `start_server` sets it to 1 before the first import when a cluster address is configured.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch
from torch import Tensor

from fl.gossip_hosts import HostLink, NodeHost, addresses_of, placement
from fl.gossip_sim import Hosts
from fl.pool import WorkerPool, balance, chunk_size
from fl.worker import Worker, WorkerSetup, as_tensor
from transport.channel import Channel, Endpoint
from transport.inprocess import InProcessChannel
from transport.codecs.base import Payload
from transport.messages import Result, Task


def init_ray(address: str = "", num_cpus: int | None = None) -> bool:
    """Start local Ray without dashboard or usage stats (or join `address`); False if Ray was already running."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(
        address=address or "local",  # never silently join whatever cluster /tmp/ray last recorded
        num_cpus=None if address else num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    if sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)  # Ray's own handler would exit 15: the caller's decides
    return True


def ray_get(refs: Any) -> Any:
    """`ray.get`, raising what a remote call raised as itself, not wrapped in Ray's traceback (so that a bad value
    or a diverged run ends with one line, on Ray as in-process)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise


def _numpy_tensors(message: Any) -> Any:
    """The message with its tensors as numpy arrays, which Ray serializes several times faster than torch tensors."""
    return _convert(message, lambda t: t if t.dtype == torch.bfloat16 else t.numpy())  # numpy has no bfloat16


def _torch_tensors(message: Any) -> Any:
    return _convert(message, lambda a: as_tensor(a, torch.device("cpu")) if isinstance(a, np.ndarray) else a)


def _convert(message: Any, convert: Callable[[Any], Any]) -> Any:
    changes = {name: {k: convert(v) for k, v in getattr(message, name).items()} for name in ("tensors", "state")}
    update = getattr(message, "update", None)
    if isinstance(update, Payload):
        changes["update"] = dataclasses.replace(update, parts={k: convert(v) for k, v in update.parts.items()})
    elif update is not None:
        changes["update"] = convert(update)
    return dataclasses.replace(message, **changes)


class RayEndpoint(Endpoint):
    """Worker side: global parameters come from the object store (fetched once per version), results ride back
    as the actor call's return value."""

    def __init__(self) -> None:
        self._cached: tuple[Any, Tensor] | None = None

    def open(self, envelope: tuple[Task, Any]) -> tuple[Task, Tensor]:
        task, ref = envelope
        if self._cached is None or self._cached[0] != ref:
            self._cached = (ref, as_tensor(ray.get(ref), torch.device("cpu")))
        return _torch_tensors(task), self._cached[1]

    def send(self, result: Result) -> Result:
        return _numpy_tensors(result)


def ray_object_channel() -> InProcessChannel:
    """The direct channel on Ray: the global parameters go into the object store once per version, tasks and results
    travel with the actor calls, tensors as numpy arrays."""
    return InProcessChannel(share=lambda params: ray.put(params.numpy()), pack=_numpy_tensors,
                            unpack=_torch_tensors, endpoint=RayEndpoint())


class RayPool(WorkerPool):
    """Worker actors, each running many virtual clients; tasks are balanced by cost (longest first) and sent in
    chunks of at most `chunk_bytes` of updates, so small models cost one call per worker and round while a large
    model's updates still stream one at a time."""

    def __init__(self, setup: WorkerSetup, endpoint: Endpoint, num_workers: int, cpus: float = 1.0,
                 gpus: float = 0.0) -> None:
        self.chunk_size = chunk_size(setup)
        actor = ray.remote(Worker).options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy="SPREAD")
        setup_ref = ray.put(setup)
        self.actors = [actor.remote(setup_ref, endpoint) for _ in range(num_workers)]
        ray.get([a.__ray_ready__.remote() for a in self.actors])  # construction counts as start-up, not round 1

    def run(self, envelopes: Sequence[Any], costs: Sequence[float]) -> Iterator[Any]:
        assignment = balance(costs, len(self.actors))
        chunks: list[list[int]] = []  # task indices, ascending within each chunk
        for worker in range(len(self.actors)):
            mine = [i for i, w in enumerate(assignment) if w == worker]
            chunks += [mine[k : k + self.chunk_size] for k in range(0, len(mine), self.chunk_size)]
        place = {task: (c, position) for c, chunk in enumerate(chunks) for position, task in enumerate(chunk)}
        refs: list[Any] = [self.actors[assignment[chunk[0]]].run_many.remote([envelopes[i] for i in chunk])
                           for chunk in chunks]
        fetched: dict[int, list[Any]] = {}
        for task in range(len(envelopes)):
            c, position = place[task]
            if c not in fetched:
                fetched[c], refs[c] = ray_get(refs[c]), None
            receipt, fetched[c][position] = fetched[c][position], None  # drop each reply once it is handed on
            if position == len(chunks[c]) - 1:
                del fetched[c]
            yield receipt

    def node_ids(self) -> list[str]:
        """The Ray node each worker runs on."""
        return ray.get([a.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()) for a in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def worker_layout(runtime: Any) -> tuple[int, float, float]:
    """(workers, CPUs each, GPUs each): the config's numbers, or one worker per GPU (else per CPU) in the cluster."""
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    gpus_each = runtime.gpus_per_worker
    if gpus_each == 0 and gpus > 0 and runtime.device != "cpu":
        gpus_each = 1.0
    workers = runtime.num_workers
    if workers == 0:
        by_cpu = int(cpus // runtime.cpus_per_worker)
        workers = min(by_cpu, int(gpus // gpus_each)) if gpus_each > 0 else by_cpu
    return max(workers, 1), runtime.cpus_per_worker, gpus_each


@contextmanager
def start_ray_server(runtime: Any, setup: Any, make_channel: Callable[[], Channel] | None = None,
                     host: type | None = None) -> Iterator[Callable[..., Any]]:
    """A Server actor (no CPU reserved: it mostly waits) with a pool of worker actors; yields `call(method, *args)`.
    The channel is made inside the actor (`make_channel`; default: Ray objects). `host`: the class the actor runs,
    built as `host(setup, make_channel, make_pool)` (default `fl.server.Server`; a decentralized run's `GossipRun`)."""
    from fl.server import Server

    started = init_ray(runtime.address)
    workers, cpus, gpus = worker_layout(runtime)
    make_pool = functools.partial(RayPool, num_workers=workers, cpus=cpus, gpus=gpus)
    server = ray.remote(host or Server).options(num_cpus=0).remote(setup, make_channel or ray_object_channel,
                                                                    make_pool)
    try:
        yield lambda method, *args: ray_get(getattr(server, method).remote(*args))
    finally:
        ray.get(server.close.remote())
        ray.kill(server)
        if started:
            ray.shutdown()


class RayHosts(Hosts):
    """A decentralized run's node hosts as Ray actors, one per worker the runtime's layout gives (each with a
    worker's CPUs), nodes balanced by shard size; they send each other their messages over gRPC."""

    def __init__(self, setup: Any, runtime: Any, link: HostLink) -> None:
        self.started = init_ray(runtime.address)
        self.num_nodes = setup.data.num_clients
        workers, cpus, _ = worker_layout(runtime)  # the nodes train on CPUs, as `fl node` does
        groups = placement(setup, workers)
        actor = ray.remote(NodeHost).options(num_cpus=cpus, scheduling_strategy="SPREAD")
        setup_ref = ray.put(setup)
        self.actors = [actor.remote(setup_ref, group, link) for group in groups]
        addresses = addresses_of(groups, ray_get([a.where.remote() for a in self.actors]))
        ray_get([a.connect.remote(addresses) for a in self.actors])

    def call(self, method: str, *args: Any) -> list[Any]:
        return ray_get([getattr(actor, method).remote(*args) for actor in self.actors])

    def close(self) -> None:
        try:
            ray.get([actor.close.remote() for actor in self.actors])
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            if self.started:
                ray.shutdown()
