"""One node of a decentralized run as its own process (`fl node`): it trains, gossips with its neighbours over gRPC
(transport/gossip_peer.py) and writes its final parameters.

A node builds what the simulation (fl/gossip_sim.py) builds for it: the data, the model and its initial parameters
(seeded by (seed, INIT), or its own with topology.independent_init), the strategy with its compressor, the topology
(`gossip_setup`) and its shard. Each round it trains as the "nodes" engine does (seed (seed, round, node, TRAINING),
through the strategy's client hook); then, per gossip step, it sends its message to its out-neighbours, waits for its
in-neighbours' messages of the same round and step, and mixes them with `fl.gossip.mix` on its own row of W: the same
float64 product, summed in ascending sender order as the simulation sums the row. Messages travel as their exact
bits, or as a compressing strategy's payload that the receiver decodes as the sender does, so each node ends with
its row of the simulation (engine "nodes") bit for bit. A simulation's node hosts (fl/gossip_hosts.py) keep `Node`s
too.

Rounds are synchronous per neighbourhood: a node mixes round r once all its in-neighbours' round-r messages are in,
so neighbours never drift far apart, and the inbox holds at most a few rounds. A node checks its own training before
it sends (`Diverged` when it diverged), and its inbox refuses a message beyond security.max_update_norm times
max(1, the norm of the node's own parameters at the start of its round).

Identity: a node given a certificate of its own (one that names "node-ID", signed by the operator's CA, which is
--root-cert) runs mutual TLS, and its peers know it by its certificate alone; with a shared certificate and secret,
the nodes' tokens keep strangers out but any node could sign as another.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fl.bounds import l2_norm, update_bound
from fl.config import ConfigError, RunConfig
from fl.gossip import check_training, diverged, mix
from fl.gossip_sim import (CodecCompressor, GossipSetup, build_strategy, gossip_setup, initial_params, network_of,
                           steps_per_round)
from fl.params import ParamSpec
from fl.scenario import build_data, build_model_fn
from fl.seeding import INIT, TRAINING, derive_seed
from fl.training import LocalTrainer, evaluate
from fl.worker import as_tensor
from simulations.mixing import Topology
from strategies.base import ClientHook
from strategies.registry import kind
from transport.codecs.base import Payload
from transport.codecs.cast import IdentityCodec
from transport.gossip_peer import GossipClient, GossipServer, Inbox, certificate_nodes
from transport.grpc_common import ServerLimits

Exchange = Callable[[int, int, Payload, list[int], list[int]], dict[int, Tensor]]  # (round, step, message, to, from)


@dataclass(frozen=True)
class Security:
    """TLS and tokens: a certificate and key to listen with (and to dial with, when the certificate is the node's own:
    `per_node_certificate`), a root certificate to trust when dialling peers (with per-node certificates, the
    operator's CA, which also checks the callers'), and the secret every node's token derives from
    (`client_token(secret, node id)`), which keeps strangers out but does not tell the nodes apart."""

    tls_cert: str = ""
    tls_key: str = ""
    root_cert: str = ""
    secret: bytes | None = None


def per_node_certificate(security: Security, node_id: int) -> bool:
    """Whether the node has a certificate of its own (one naming "node-ID"): then it runs mutual TLS. ConfigError
    for a certificate that names another node, or one without the CA (root certificate) that checks its peers'."""
    if not security.tls_cert:
        return False
    try:
        named = certificate_nodes(security.tls_cert)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the certificate {security.tls_cert}: {error}") from None
    if not named:
        return False
    if named != {node_id}:
        raise ConfigError(f"the certificate {security.tls_cert} names node(s) {sorted(named)}, not node {node_id} "
                          f"(--node-id): each node runs with its own certificate")
    if not security.root_cert:
        raise ConfigError(f"node {node_id}'s own certificate needs the CA that signed every node's certificate "
                          f"(--root-cert or transport.tls_root_cert)")
    return True


def parse_peers(text: str) -> dict[int, str]:
    """"1=127.0.0.1:5001,7=127.0.0.1:5007" -> {1: "127.0.0.1:5001", 7: "127.0.0.1:5007"}."""
    peers: dict[int, str] = {}
    for item in filter(None, (item.strip() for item in text.split(","))):
        match = re.fullmatch(r"(\d+)=(\S+:\d+)", item)
        if match is None:
            raise ConfigError(f"--peers takes ID=HOST:PORT pairs separated by commas, got {item!r}")
        if int(match.group(1)) in peers:
            raise ConfigError(f"--peers names node {match.group(1)} twice")
        peers[int(match.group(1))] = match.group(2)
    return peers


def neighbours(topology: Topology, node: int) -> tuple[set[int], set[int]]:
    """(in-neighbours, out-neighbours) of `node` over one period of the topology's matrices."""
    ins: set[int] = set()
    outs: set[int] = set()
    for matrix in topology.matrices:
        rows, cols, _ = sp.find(matrix)
        ins |= {int(j) for i, j in zip(rows, cols) if i == node != j}
        outs |= {int(i) for i, j in zip(rows, cols) if j == node != i}
    return ins, outs


class Node:
    """Node `node` of a decentralized run: its parameters, state, shard and strategy, as the simulation keeps them.
    A round is `train`, then per gossip step `outgoing` (the message, as the payload that travels) and `combine`
    (with what its in-neighbours sent), then `finish`; `run_round` does them all with an `Exchange`."""

    def __init__(self, setup: GossipSetup, node: int, trainer: LocalTrainer | None = None) -> None:
        """`trainer`: one that several nodes of a process share (they train one at a time)."""
        torch.set_num_threads(setup.threads)
        self.setup, self.node, data = setup, node, setup.data
        torch.manual_seed(derive_seed(setup.seed, INIT))
        self.model = setup.model_fn()
        self.spec = ParamSpec.from_module(self.model)
        self.params = initial_params(setup, self.spec.flatten(self.model).detach(), node)
        self.compressor = CodecCompressor(setup.codec, setup.seed) if setup.codec is not None else None
        self.strategy = build_strategy(setup.strategy, network_of(self.spec, data.num_clients, self.params.dtype),
                                       self.compressor)
        self.codec = setup.codec if self.compressor is not None else None  # what its messages are encoded with
        self.topology = steps_per_round(setup.topology, self.strategy)
        self.state = self.strategy.initial_state(node, self.params)
        lo, hi = data.offsets[node], data.offsets[node + 1]
        cpu = torch.device("cpu")
        self.x, self.y = as_tensor(data.x[lo:hi], cpu), as_tensor(data.y[lo:hi], cpu)
        self.trainer = trainer if trainer is not None else LocalTrainer(setup.model_fn(), cpu)
        self._before = self._current = self._message = self.params
        self.message_bound = update_bound(setup.max_update_norm, l2_norm(self.params))  # what the inbox admits

    def senders(self, round: int, step: int) -> list[int]:
        """The in-neighbours whose messages the node mixes in gossip step `step` of `round` (itself left out)."""
        return [j for j in sp.find(self.topology.mixing(round, step).getrow(self.node))[1].tolist() if j != self.node]

    def receivers(self, round: int, step: int) -> list[int]:
        """The out-neighbours the node sends its message of (round, step) to."""
        return [i for i in sp.find(self.topology.mixing(round, step).getcol(self.node))[0].tolist() if i != self.node]

    def inbox(self) -> Inbox:
        """An inbox for the node's messages: its in-neighbours', of its strategy's steps, within its norm bound."""
        return Inbox(self.node, self.senders, *self.message_size(), codec=self.codec, steps=self.strategy.gossip_steps,
                     max_norm=lambda: self.message_bound)

    def message_size(self) -> tuple[int, torch.dtype]:
        """(values, dtype) of every message (the strategy's first one, on a copy of the state)."""
        state = {key: value.clone() for key, value in self.state.items()}
        message = self.strategy.message(self.node, 0, self.params, self.params, state)
        if self.compressor is not None:
            self.compressor.payloads.clear()
        return message.numel(), message.dtype

    def train(self, round: int) -> float:
        """Local training of `round` (seed (seed, round, node, TRAINING)); returns the train loss. Diverged if the
        training diverged (a NaN or Inf loss or update, or an update beyond the norm bound)."""
        strategy, node = self.strategy, self.node
        strategy.begin_round(round)
        self._before = self.params
        self.message_bound = update_bound(self.setup.max_update_norm, l2_norm(self.params))
        start = strategy.train_from(node, self._before, self.state)
        algorithm = strategy.client_algorithm
        hook = ClientHook() if algorithm is None else algorithm.start(start[:self.spec.num_trainable], {}, {})
        config = self.setup.train_config.with_overrides(strategy.train_config(round))
        seed = derive_seed(self.setup.seed, round, node, TRAINING)
        outcome = self.trainer.train(start, self.x, self.y, config, seed, hook)
        check_training(round, node, outcome.loss, outcome.update, start, self.setup.max_update_norm)
        self._current = (self._before.to(torch.float64) + outcome.update.to(torch.float64)).to(self._before.dtype)
        return outcome.loss

    def outgoing(self, step: int) -> Payload:
        """The node's message of gossip step `step`, as it travels: the compressor's payload when the strategy
        compressed it, else the identity codec's."""
        self._message = self.strategy.message(self.node, step, self._before, self._current, self.state)
        payload = self.compressor.payloads.pop(self.node, None) if self.compressor is not None else None
        return payload if payload is not None else IdentityCodec().encode(self._message.detach().contiguous(), {})[0]

    def combine(self, round: int, step: int, received: dict[int, Tensor]) -> None:
        """Mix the in-neighbours' messages of (round, step) with the node's own, and take the strategy's combine."""
        mixed, inbox = self._mix(round, step, received | {self.node: self._message})
        self._current = self.strategy.combine(self.node, step, self._before, self._current, mixed, self.state, inbox)

    def finish(self, round: int) -> None:
        """The round's result becomes the node's parameters."""
        if not torch.isfinite(self._current).all():
            raise diverged(round, self.node, "its model holds NaN or Inf after gossip")
        self.params = self._current

    def run_round(self, round: int, exchange: Exchange) -> float:
        """Train, then take the strategy's gossip steps, moving messages with `exchange`; returns the train loss."""
        loss = self.train(round)
        for step in range(self.strategy.gossip_steps(round)):
            payload = self.outgoing(step)
            self.combine(round, step, exchange(round, step, payload, self.receivers(round, step),
                                               self.senders(round, step)))
        self.finish(round)
        return loss

    def _mix(self, round: int, step: int, messages: dict[int, Tensor]) -> tuple[Tensor, list | None]:
        """sum_j w_ij m_j over the node's row of W, with the simulation's product (ascending j, float64, from 0),
        and the (j, w_ij, m_j) list for a strategy that needs it."""
        row = self.topology.mixing(round, step).getrow(self.node)
        order = np.argsort(row.indices)
        senders, weights = row.indices[order].tolist(), row.data[order]
        compact = sp.csr_matrix((weights, np.arange(len(senders)), [0, len(senders)]), shape=(1, len(senders)))
        mixed = mix(compact, torch.stack([messages[j] for j in senders]))[0]
        inbox = [(j, float(w), messages[j]) for j, w in zip(senders, weights)] if self.strategy.needs_inbox else None
        return mixed, inbox

    def model_params(self) -> Tensor:
        """The model the node's parameters stand for (push-sum divides by its weight)."""
        return self.strategy.model_of(self.node, self.params, self.state)

    def test_accuracy(self) -> float:
        """The node's own model on the central test set."""
        data = self.setup.data
        self.spec.load(self.model, self.model_params())
        cpu = torch.device("cpu")
        _, correct, count = evaluate(self.model, as_tensor(data.test_x, cpu), as_tensor(data.test_y, cpu))
        return correct / max(count, 1)


def check_peers(topology: Topology, node: int, peers: dict[int, str]) -> None:
    """The peers given must be exactly the node's neighbours in the topology (in or out, over one period)."""
    ins, outs = neighbours(topology, node)
    missing, extra = sorted((ins | outs) - set(peers)), sorted(set(peers) - (ins | outs))
    if missing or extra:
        raise ConfigError(f"node {node} on the {topology.name} topology has neighbours {sorted(ins | outs)}; --peers "
                          f"gives {sorted(peers)}" + (f" (missing {missing})" if missing else "")
                          + (f" (not neighbours: {extra})" if extra else ""))


def run_node(config: RunConfig, node_id: int, listen: str, peers: dict[int, str], security: Security = Security(),
             log: TextIO = sys.stderr) -> Path:
    """Run node `node_id` for `config.rounds` rounds, listening on `listen` and dialling `peers` (id -> HOST:PORT)
    with `security` (`fl node` fills it from its options or the config's transport keys); writes
    output_dir/NAME/node-ID.pt (the node's model and its entries, as model.pt) and returns its path."""
    if kind(config.strategy.name) != "decentralized":
        raise ConfigError(f"fl node runs a decentralized strategy; {config.strategy.name!r} is "
                          f"{kind(config.strategy.name)} (see `fl strategies`)")
    mutual = per_node_certificate(security, node_id)
    data = build_data(config.data, config.seed)
    if not 0 <= node_id < data.num_clients:
        raise ConfigError(f"--node-id must be in 0..{data.num_clients - 1}, got {node_id}")
    setup = gossip_setup(config, data, build_model_fn(config.model, data))
    if getattr(type(setup.strategy), "asynchronous", False):
        raise ConfigError(f"fl node runs synchronous gossip rounds; {config.strategy.name!r} is asynchronous (it runs "
                          f"as a simulation on the virtual clock)")
    node = Node(setup, node_id)
    check_peers(node.topology, node_id, peers)
    transport = config.transport
    inbox = node.inbox()
    tls = (security.tls_cert, security.tls_key) if security.tls_cert else None
    limits = ServerLimits(idle_seconds=transport.idle_seconds, calls_per_client=transport.calls_per_client)
    server = GossipServer(inbox, listen, tls=tls, client_ca=security.root_cert if mutual else None,
                          auth_secret=security.secret, chunk_size=transport.chunk_bytes, limits=limits)
    clients = {peer: GossipClient(address, secret=security.secret, root_cert_path=security.root_cert or None,
                                  identity=tls if mutual else None, chunk_size=transport.chunk_bytes,
                                  timeout_seconds=transport.timeout_seconds)
               for peer, address in peers.items()}
    print(f"node {node_id}: listening on {listen.rsplit(':', 1)[0]}:{server.port}; peers {sorted(peers)}",
          file=log, flush=True)
    sent = 0

    def exchange(round: int, step: int, message: Payload, receivers: list[int], senders: list[int]) -> dict[int, Tensor]:
        nonlocal sent
        sent += sum(clients[peer].send(node_id, peer, round, step, message) for peer in receivers)
        return inbox.wait_for(round, step, senders, transport.timeout_seconds)

    try:
        for round in range(1, config.rounds + 1):
            start, sent = time.perf_counter(), 0
            loss = node.run_round(round, exchange)
            print(f"node {node_id}: round {round}: train loss {loss:.4f}, sent {sent} bytes, "
                  f"{time.perf_counter() - start:.2f} s", file=log, flush=True)
    finally:
        for client in clients.values():
            client.close()
        server.stop(grace=1.0)
    path = Path(config.output_dir) / config.name / f"node-{node_id}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"name": e.name, "shape": list(e.shape), "dtype": str(e.dtype), "offset": e.offset}
               for e in node.spec.entries]
    torch.save({"params": node.model_params().clone(), "entries": entries, "node": node_id, "rounds": config.rounds},
               path)
    print(f"node {node_id}: done after {config.rounds} rounds, test accuracy {node.test_accuracy():.4f}; wrote {path}",
          file=log, flush=True)
    return path
