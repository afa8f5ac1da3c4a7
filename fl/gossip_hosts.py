"""Node hosts: a decentralized simulation whose nodes live on the workers and send their messages to each other over
gRPC, the message path of the "nodes" engine on a channel.

Each host keeps some of the nodes (`fl.node.Node`, as `fl node` runs one: parameters, state, shard, strategy) and one
`GossipServer` with an inbox per kept node; it dials every other host with a `GossipClient`. The run (`GossipRun`)
drives the hosts in lockstep: `train` a round, then per gossip step `send` (every node's message to each of its
out-neighbours, as its codec payload: CHOCO's compressed one, else the exact bits) and `mix` (each node waits for its
in-neighbours' messages and combines), then `finish`. A message crosses gRPC even between nodes of one host, so each
directed edge's bytes are the payload bytes its receiver took in. Nodes mix their own row of W in the simulation's
order, so every host count and placement gives the in-process "nodes" engine's bits.

`LocalHosts` keeps one host in this process (the local backend); `fl.ray_runtime.RayHosts` one per worker actor.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from fl.gossip_sim import GossipSetup, Hosts
from fl.grpc_channel import advertised_address
from fl.node import Node, Security
from fl.pool import balance
from fl.training import LocalTrainer
from transport.gossip_peer import GossipClient, GossipServer
from transport.grpc_common import ServerLimits

SENDERS = 8  # messages a host pushes at once


@dataclass(frozen=True)
class HostLink:
    """How hosts reach each other: the host to listen on (port: the OS's; "0.0.0.0": every interface, named to
    the others by this machine's address), TLS and tokens (the hosts are one operator's: a shared certificate and
    secret keep strangers out), the chunk size and how long to wait for a message."""

    host: str = "127.0.0.1"
    security: Security = Security()
    chunk_bytes: int = 1 << 20
    timeout_seconds: float = 120.0
    limits: ServerLimits = ServerLimits()  # each host's gossip server: idle deadline, calls per sender


class NodeHost:
    """Some nodes of a decentralized run, their inboxes behind one gRPC server, and a client for every host."""

    def __init__(self, setup: GossipSetup, nodes: Sequence[int], link: HostLink) -> None:
        trainer = LocalTrainer(setup.model_fn(), torch.device("cpu"))  # its nodes train one at a time
        self.nodes = {node: Node(setup, node, trainer) for node in nodes}
        self.inboxes = {node: kept.inbox() for node, kept in self.nodes.items()}
        security = link.security
        tls = (security.tls_cert, security.tls_key) if security.tls_cert else None
        self.server = GossipServer(self.inboxes, f"{link.host}:0", tls=tls, auth_secret=security.secret,
                                   chunk_size=link.chunk_bytes, limits=link.limits)
        self.address = advertised_address(f"{link.host}:0", self.server.port)
        self.link = link
        self.clients: dict[int, GossipClient] = {}  # receiver -> the client of its host
        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="fl-gossip-send")

    def where(self) -> str:
        """The address the other hosts dial."""
        return self.address

    def connect(self, addresses: dict[int, str]) -> None:
        """Dial every node's host (`addresses`: node -> its host's address), one client per host."""
        security, link = self.link.security, self.link
        by_address = {address: GossipClient(address, secret=security.secret, root_cert_path=security.root_cert or None,
                                            chunk_size=link.chunk_bytes, timeout_seconds=link.timeout_seconds)
                      for address in sorted(set(addresses.values()))}
        self.clients = {node: by_address[address] for node, address in addresses.items()}

    def train(self, round: int) -> dict[int, float]:
        """Every kept node's local training of `round`; its train loss by node."""
        return {node: kept.train(round) for node, kept in self.nodes.items()}

    def send(self, round: int, step: int) -> None:
        """Every kept node's message of (round, step), pushed to each of its out-neighbours."""
        messages = {node: kept.outgoing(step) for node, kept in self.nodes.items()}  # once: it may move state
        pushes = [(node, receiver, messages[node]) for node, kept in self.nodes.items()
                  for receiver in kept.receivers(round, step)]
        list(self._senders.map(lambda push: self.clients[push[1]].send(push[0], push[1], round, step, push[2]),
                               pushes))

    def mix(self, round: int, step: int) -> None:
        """Every kept node takes its in-neighbours' messages of (round, step) and combines."""
        for node, kept in self.nodes.items():
            received = self.inboxes[node].wait_for(round, step, kept.senders(round, step), self.link.timeout_seconds)
            kept.combine(round, step, received)

    def finish(self, round: int) -> tuple[dict[int, Tensor], dict[tuple[int, int], int]]:
        """End the round: (each kept node's model, the payload bytes each edge into a kept node carried)."""
        for kept in self.nodes.values():
            kept.finish(round)
        edges = {(sender, node): size for node, inbox in self.inboxes.items()
                 for sender, size in inbox.take_bytes().items()}
        return {node: kept.model_params() for node, kept in self.nodes.items()}, edges

    def close(self) -> None:
        self._senders.shutdown(wait=False)
        for client in set(self.clients.values()):
            client.close()
        self.server.stop(grace=1.0)


def placement(setup: GossipSetup, num_hosts: int) -> list[list[int]]:
    """The nodes each host keeps: balanced by shard size (longest first onto the least loaded), none empty."""
    sizes = [float(size) for size in setup.data.train_sizes()]
    hosts = max(1, min(num_hosts, len(sizes)))
    groups: list[list[int]] = [[] for _ in range(hosts)]
    for node, host in enumerate(balance(sizes, hosts)):
        groups[host].append(node)
    return groups


def addresses_of(groups: list[list[int]], addresses: list[str]) -> dict[int, str]:
    """node -> the address of the host that keeps it."""
    return {node: address for group, address in zip(groups, addresses) for node in group}


class LocalHosts(Hosts):
    """One host in this process keeping every node; its messages still cross gRPC (on `link.host`)."""

    def __init__(self, setup: GossipSetup, link: HostLink = HostLink()) -> None:
        self.num_nodes = setup.data.num_clients
        groups = placement(setup, 1)
        self.hosts = [NodeHost(setup, groups[0], link)]
        self.hosts[0].connect(addresses_of(groups, [self.hosts[0].address]))

    def call(self, method: str, *args: Any) -> list[Any]:
        return [getattr(host, method)(*args) for host in self.hosts]

    def close(self) -> None:
        for host in self.hosts:
            host.close()
