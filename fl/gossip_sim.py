"""A decentralized simulation: no server; every node trains from its own parameters and gossips over a topology.

Each round every node trains locally (node i's task of round r is seeded as client i's task in round r of a
synchronous run), then takes the strategy's gossip steps over the topology's mixing matrix. Two engines train the
nodes: "vectorized" (every node at once with one vmapped step, `fl/batched_training.py`) and "nodes" (one
`LocalTrainer` run per node, through the strategy's client hook). Rounds report the averaged model's test accuracy,
the nodes' own accuracies (mean, min, max, on a seeded subset of the test set), the consensus distance and the bytes
of every directed edge. Where the nodes live:

- On hosts (`make_hosts`, the gRPC channel; `fl/gossip_hosts.py`): each host keeps some nodes with their state and
  serves their inboxes over gRPC; the nodes send each other their messages (a compressing strategy's payload, else
  the exact bits) and mix their own rows of W. Each edge's bytes are the payload bytes its receiver took in.
- On a worker pool (`make_channel` and `make_pool`, as a `fl.server.Server` takes them: Ray's direct channel): every
  node trains as a TRAIN task posted on the channel and run by the pool, like a virtual client: the node's own
  parameters ride in the task's simulation-only state (`NODE_START`, uncounted), and its update comes back through
  the channel's `ResultAdmission`. Each round publishes the averaged model only because a channel needs a version for
  its tasks to name; that traffic is the simulation's, never counted as gossip. The messages are mixed here.
- In this process (neither): all node parameters are one [nodes, params] tensor, and `fl.gossip.gossip_round` mixes.

Where the messages are mixed here, each is counted once per directed edge it crosses, at its payload size. Every
path gives the same bits and bytes, with any number of hosts or workers. The vectorized engine always runs here.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
import inspect
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from fl.batched_training import BatchedTrainer, accuracies, batchable
from fl.compression import UplinkDecoder
from fl.config import GOSSIP_ENGINES
from fl.gossip import check_training, diverged, gossip_round
from fl.models import ModelFn
from fl.params import ParamSpec
from fl.seeding import INIT, TOPOLOGY, TRAINING, derive_seed
from fl.pool import WorkerPool
from fl.training import UPDATE_DTYPES, LocalTrainer, TrainConfig, evaluate
from fl.validation import ResultAdmission
from fl.worker import NODE_START, WorkerSetup, as_tensor
from simulations.federated_data import FederatedData
from simulations.topologies import Topology, parse_topology
from strategies.base import ClientHook
from strategies.gossip.base import Layout, Network
from strategies.registry import strategy_config
from transport.channel import Channel, Endpoint
from transport.codecs.base import Codec, Payload
from transport.codecs.registry import make_codec
from transport.downlink import Broadcast
from transport.messages import TRAIN, Task

VECTORIZED_FROM = 100  # "auto" takes the vectorized engine from this many nodes up, even where hosts could run them
NODE_TEST = 2000  # test samples (a seeded subset of the central test set) each node's own model is evaluated on


class Hosts(ABC):
    """The hosts of one run (fl/gossip_hosts.py, fl/ray_runtime.py), driven in lockstep."""

    num_nodes: int

    @abstractmethod
    def call(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every host (all at once where they run apart); their answers, host by host."""

    @abstractmethod
    def close(self) -> None:
        """Stop every host."""

    def run_round(self, round: int, steps: int) -> tuple[Tensor, Tensor, dict[tuple[int, int], int]]:
        """Train, then `steps` gossip steps (every host sends, then every host mixes); (losses by node,
        [nodes, params] models in node order, payload bytes per directed edge)."""
        losses: dict[int, float] = {}
        for answer in self.call("train", round):
            losses.update(answer)
        for step in range(steps):
            self.call("send", round, step)
            self.call("mix", round, step)
        models: dict[int, Tensor] = {}
        edges: dict[tuple[int, int], int] = defaultdict(int)
        for kept, carried in self.call("finish", round):
            models.update(kept)
            for edge, size in carried.items():
                edges[edge] += size
        order = range(self.num_nodes)
        return torch.tensor([losses[n] for n in order]), torch.stack([models[n] for n in order]), dict(edges)


class CodecCompressor:
    """A transport codec as the strategies' `Compressor`: encode, decode, and the payload's bytes. It keeps each
    node's last payload (`payloads`), which is what travels in place of the decoded message."""

    def __init__(self, codec: Codec, seed: int) -> None:
        self.codec, self.seed = codec, seed
        self.payloads: dict[int, Payload] = {}  # node -> its last compressed message, until taken

    def compress(self, tensor: Tensor, node: int, round: int) -> tuple[Tensor, int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, round, node))
        payload, _ = self.codec.encode(tensor.detach().contiguous(), {}, generator)
        decoded, _ = self.codec.decode(payload, {})
        self.payloads[node] = payload
        return decoded.to(tensor.dtype), payload.nbytes()


def initial_params(setup: "GossipSetup", first: Tensor, node: int) -> Tensor:
    """Node `node`'s initial parameters: `first` (the model drawn with seed (seed, INIT)), or with
    `independent_init` its own draw (seed (seed, INIT, node)) for every node but node 0."""
    if not setup.independent_init or node == 0:
        return first.clone()
    torch.manual_seed(derive_seed(setup.seed, INIT, node))
    return ParamSpec.from_module(model := setup.model_fn()).flatten(model).detach()


def network_of(spec: ParamSpec, num_nodes: int, dtype: torch.dtype) -> Network:
    """What a gossip strategy is told of the run: node count, parameter layout and dtype."""
    layout = Layout(tuple(e.name for e in spec.entries), tuple(e.offset for e in spec.entries),
                    tuple(e.numel for e in spec.entries), tuple(e.trainable for e in spec.entries))
    return Network(num_nodes, spec.num_params, spec.num_trainable, layout, dtype)


def build_strategy(config: Any, network: Network, compressor: CodecCompressor | None) -> Any:
    """The strategy of `config`, handed the compressor when it takes one."""
    if "compressor" in inspect.signature(config.build).parameters:
        return config.build(network, compressor=compressor)
    return config.build(network)


def steps_per_round(topology: Topology, strategy: Any) -> Topology:
    """A time-varying graph changes at every gossip step, and a round may take several."""
    if topology.time_varying:
        return dataclasses.replace(topology, steps_per_round=strategy.gossip_steps(1))
    return topology


@dataclass
class GossipSetup:
    model_fn: ModelFn
    data: FederatedData
    strategy: Any  # a gossip strategy's config (build(network[, compressor]))
    train_config: TrainConfig
    topology: Topology
    seed: int = 0
    engine: str = "auto"
    independent_init: bool = False  # every node draws its own initial model (else all start from one)
    codec: Codec | None = None  # for a strategy that compresses its messages
    eval_every: int = 1  # evaluate the averaged and the node models every N rounds (0: only when asked)
    threads: int = 1  # torch's intra-op threads (many small per-node operations run fastest on one)
    device: str = "cpu"  # where pool workers train ("auto": CUDA when present); the in-process engines use the CPU
    max_update_norm: float = 0.0  # security.max_update_norm: bounds a node's own update and what it receives


class GossipRun:
    def __init__(self, setup: GossipSetup, make_channel: Callable[[], Channel] | None = None,
                 make_pool: Callable[[WorkerSetup, Endpoint], WorkerPool] | None = None,
                 make_hosts: Callable[[GossipSetup], Hosts] | None = None) -> None:
        """`make_channel` and `make_pool` (both or neither): the "nodes" engine trains on that pool; `make_hosts`:
        the "nodes" engine keeps the nodes on those hosts, which send each other their messages (see above)."""
        torch.set_num_threads(setup.threads)
        self.setup, data = setup, setup.data
        self.num_nodes = data.num_clients
        torch.manual_seed(derive_seed(setup.seed, INIT))
        self.model = setup.model_fn()
        self.spec = ParamSpec.from_module(self.model)
        self.params = self._initial_params()
        self.compressor = CodecCompressor(setup.codec, setup.seed) if setup.codec is not None else None
        network = network_of(self.spec, self.num_nodes, self.params.dtype)
        self.strategy = build_strategy(setup.strategy, network, self.compressor)
        self.topology = steps_per_round(setup.topology, self.strategy)
        self.states = [self.strategy.initial_state(i, self.params[i]) for i in range(self.num_nodes)]
        device = torch.device("cpu")
        x, y = as_tensor(data.x, device), as_tensor(data.y, device)
        self.shards = [(x[data.offsets[i]:data.offsets[i + 1]], y[data.offsets[i]:data.offsets[i + 1]])
                       for i in range(self.num_nodes)]
        self.test_x, self.test_y = as_tensor(data.test_x, device), as_tensor(data.test_y, device)
        sample = torch.randperm(len(self.test_y), generator=torch.Generator().manual_seed(setup.seed))[:NODE_TEST]
        self.node_test_x, self.node_test_y = self.test_x[sample], self.test_y[sample]
        self.engine = self._choose_engine(on_hosts=make_hosts is not None)
        self.batched = BatchedTrainer(setup.model_fn(), device) if self.engine == "vectorized" else None
        self.channel: Channel | None = None
        self.pool: WorkerPool | None = None
        self.hosts: Hosts | None = None
        if self.engine == "nodes" and make_hosts is not None:
            self.hosted_models = self.node_models()  # as the hosts' nodes start
            self.hosts = make_hosts(setup)
        elif self.engine == "nodes" and make_pool is not None:
            self._start_pool(make_channel, make_pool)
        in_process = self.engine == "nodes" and self.pool is None and self.hosts is None
        self.trainer = LocalTrainer(setup.model_fn(), device) if in_process else None
        self.edge_bytes: dict[tuple[int, int], int] = defaultdict(int)
        self.spectral_gap = self.topology.spectral_gap()

    def _initial_params(self) -> Tensor:
        first = self.spec.flatten(self.model).detach()
        if not self.setup.independent_init:
            return first.repeat(self.num_nodes, 1)
        return torch.stack([initial_params(self.setup, first, node) for node in range(self.num_nodes)])

    def _start_pool(self, make_channel: Callable[[], Channel],
                    make_pool: Callable[[WorkerSetup, Endpoint], WorkerPool]) -> None:
        """The channel (its admission checks every result, as a server's does) and the pool the nodes train on."""
        setup, data = self.setup, self.setup.data
        update_dtype = UPDATE_DTYPES[setup.train_config.update_dtype]
        self.decoder = UplinkDecoder(make_codec("identity"), self.spec.num_params, (update_dtype,))
        self.channel = make_channel()
        self.channel.admit_with(ResultAdmission(data.train_sizes(), data.test_sizes(), self.decoder, {}))
        worker_setup = WorkerSetup(setup.model_fn, data, setup.train_config, self.strategy.client_algorithm,
                                   setup.device, setup.threads, max_update_norm=setup.max_update_norm)
        self.pool = make_pool(worker_setup, self.channel.endpoint())

    def _choose_engine(self, on_hosts: bool) -> str:
        """"auto": node by node when messages can travel between hosts and the nodes are few, or when the
        vectorized engine cannot train the run; else vectorized."""
        engine, why = self.setup.engine, batchable(self.model, self.setup.train_config)
        if engine not in GOSSIP_ENGINES:
            raise ValueError(f"engine {engine!r} is not one of: {', '.join(GOSSIP_ENGINES)}")
        if self.strategy.client_algorithm is not None:
            why = why or "the strategy changes the local step (its client hook runs node by node)"
        if engine == "vectorized" and why:
            raise ValueError(f"the vectorized engine cannot train this run: {why}")
        few = on_hosts and self.num_nodes < VECTORIZED_FROM
        return "nodes" if engine == "nodes" or why or (engine == "auto" and few) else "vectorized"

    def run_round(self, round: int, evaluate_now: bool = False) -> dict[str, Any]:
        """Train every node, gossip, and report the round; evaluate every `eval_every` rounds and when asked."""
        start = time.perf_counter()
        metrics = self._round(round)
        every = self.setup.eval_every
        if evaluate_now or (every > 0 and round % every == 0):
            metrics.update(self.evaluate())
        metrics["wall_seconds"] = time.perf_counter() - start
        return metrics

    def get_global(self) -> Tensor:
        """The average of the node models: what the run's `model.pt` holds."""
        return self.node_models().to(torch.float64).mean(0).to(self.params.dtype)

    def get_spec(self) -> ParamSpec:
        return self.spec

    def get_events(self) -> list:
        return []

    def get_staleness(self) -> dict[int, int]:
        return {}

    def get_spectral_gap(self) -> float:
        """1 - |lambda_2| of the mixing matrix (of one period's product for a time-varying graph)."""
        return self.spectral_gap

    def get_edge_bytes(self) -> dict[str, int]:
        """Bytes sent along each directed edge so far, keyed "sender->receiver"."""
        return {f"{s}->{r}": n for (s, r), n in sorted(self.edge_bytes.items())}

    def close(self) -> None:
        """Release the hosts, or the pool and the channel, when the nodes train on them."""
        if self.hosts is not None:
            self.hosts.close()
        if self.pool is not None:
            self.pool.close()
        if self.channel is not None:
            self.channel.close()

    def _round(self, round: int) -> dict[str, Any]:
        self.strategy.begin_round(round)
        if self.hosts is not None:
            losses = self._round_on_hosts(round)
        else:
            losses = self._round_here(round)
        sizes = torch.as_tensor(self.setup.data.train_sizes(), dtype=torch.float64)
        metrics: dict[str, Any] = {
            "round": round, "clients": self.num_nodes,
            "train_loss": float((losses.double() * sizes).sum() / sizes.sum()),
            "bytes_up": self._round_bytes, "bytes_down": self._round_bytes,
            "consensus_distance": self.consensus_distance(), "virtual_time": 0.0,
        }
        if round == 1:
            metrics["spectral_gap"] = self.spectral_gap
        return metrics

    def _round_here(self, round: int) -> Tensor:
        """Train (in this process or on the pool) and gossip here, counting each message per edge; the losses."""
        before = self.params
        starts = torch.stack([self.strategy.train_from(i, before[i], self.states[i]) for i in range(self.num_nodes)])
        updates, losses = self._train(round, starts)
        for node in range(self.num_nodes):
            check_training(round, node, float(losses[node]), updates[node], starts[node], self.setup.max_update_norm)
        trained = (before.to(torch.float64) + updates.to(torch.float64)).to(before.dtype)
        self._round_bytes = 0
        self.params = gossip_round(self.strategy, round, before, trained, self.topology.mixing, self.states,
                                   self._carry)
        if not torch.isfinite(self.params).all():
            raise FloatingPointError(f"round {round}: a node's model holds NaN or Inf (try a smaller learning rate)")
        return losses

    def _round_on_hosts(self, round: int) -> Tensor:
        """The hosts train, send their messages over gRPC and mix, step by step; the losses. Each edge's bytes are
        what its receiver took in."""
        losses, self.hosted_models, edges = self.hosts.run_round(round, self.strategy.gossip_steps(round))
        for edge, size in edges.items():
            self.edge_bytes[edge] += size
        self._round_bytes = sum(edges.values())
        return losses

    def _train(self, round: int, starts: Tensor) -> tuple[Tensor, Tensor]:
        config = self.setup.train_config.with_overrides(self.strategy.train_config(round))
        seeds = [derive_seed(self.setup.seed, round, node, TRAINING) for node in range(self.num_nodes)]
        if self.batched is not None:
            return self.batched.train(starts, self.shards, config, seeds)
        if self.pool is not None:
            return self._train_on_pool(round, starts, seeds)
        updates, losses = [], []
        algorithm, num_trainable = self.strategy.client_algorithm, self.spec.num_trainable
        for node, ((x, y), seed) in enumerate(zip(self.shards, seeds)):
            hook = ClientHook() if algorithm is None else algorithm.start(starts[node][:num_trainable], {}, {})
            outcome = self.trainer.train(starts[node], x, y, config, seed, hook)
            updates.append(outcome.update)
            losses.append(outcome.loss)
        return torch.stack(updates), torch.tensor(losses)

    def _train_on_pool(self, round: int, starts: Tensor, seeds: list[int]) -> tuple[Tensor, Tensor]:
        """Every node's training as a TRAIN task of version `round`, run by the pool; (updates, losses) by node."""
        self.channel.publish(round, Broadcast(self.get_global()))  # the version the tasks name; no node trains on it
        overrides, sizes = self.strategy.train_config(round), self.setup.data.train_sizes()
        tasks = [Task(TRAIN, round, node, seed, overrides, state={NODE_START: starts[node].clone()})
                 for node, seed in enumerate(seeds)]
        envelopes = [self.channel.post(task) for task in tasks]
        receipts = self.pool.run(envelopes, [float(sizes[task.client_id]) for task in tasks])
        try:
            results = [self.channel.receive(receipt) for receipt in receipts]
        finally:
            self.channel.traffic.take()  # the tasks' own bytes are the simulation's, not gossip
        for result in results:
            if result.kind != TRAIN:  # the worker found the node's training diverged (or its values were refused)
                raise diverged(round, result.client_id, "a NaN or Inf loss or update, or an update beyond "
                                                        "security.max_update_norm")
        self.decoder.commit(range(self.num_nodes))
        return torch.stack([r.update for r in results]), torch.tensor([r.metrics["loss"] for r in results])

    def _carry(self, messages: Tensor, round: int, step: int) -> Tensor:
        """Count each message once per directed edge it crosses (the payload size when it was compressed)."""
        plain = messages[0].numel() * messages.element_size()
        payloads = self.compressor.payloads if self.compressor is not None else {}
        for sender, receiver in self.topology.edges(round, step):
            size = payloads[sender].nbytes() if sender in payloads else plain
            self.edge_bytes[(sender, receiver)] += size
            self._round_bytes += size
        if self.compressor is not None:
            self.compressor.payloads = {}
        return messages

    def node_models(self) -> Tensor:
        """Each node's model as it would be evaluated (push-sum divides by its weight)."""
        if self.hosts is not None:
            return self.hosted_models
        return torch.stack([self.strategy.model_of(i, self.params[i], self.states[i]) for i in range(self.num_nodes)])

    def consensus_distance(self) -> float:
        """Mean squared distance of the node models to their average."""
        models = self.node_models().to(torch.float64)
        return float(((models - models.mean(0)) ** 2).sum(1).mean())

    def evaluate(self) -> dict[str, float]:
        """Test loss and accuracy of the averaged model on the central test set, and the mean, min and max accuracy
        of the nodes' own models on `NODE_TEST` of its samples."""
        models = self.node_models()
        average = models.to(torch.float64).mean(0).to(models.dtype)
        loss, accuracy = self._test(average)
        node_accuracies = accuracies(self.model, models, self.node_test_x, self.node_test_y).numpy()
        return {"test_loss": loss, "test_accuracy": accuracy, "node_accuracy_mean": float(node_accuracies.mean()),
                "node_accuracy_min": float(node_accuracies.min()), "node_accuracy_max": float(node_accuracies.max())}

    def _test(self, params: Tensor) -> tuple[float, float]:
        self.spec.load(self.model, params)
        loss_sum, correct, count = evaluate(self.model, self.test_x, self.test_y)
        return loss_sum / max(count, 1), correct / max(count, 1)


def gossip_setup(config: Any, data: FederatedData, model_fn: ModelFn) -> GossipSetup:
    """A decentralized run from a RunConfig: the strategy, the `[topology]` table, and the strategy's compression."""
    section = config.topology
    topology = parse_topology(section.name, data.num_clients, section.options, section.weights,
                              derive_seed(config.seed, TOPOLOGY))
    strategy = strategy_config(config.strategy.name, config.strategy.options)
    compression = getattr(strategy, "compression", "")
    return GossipSetup(model_fn, data, strategy, config.client, topology, config.seed, section.engine,
                       section.independent_init, make_codec(compression) if compression else None, config.eval.every,
                       config.runtime.threads_per_worker, config.runtime.device, config.security.max_update_norm)
