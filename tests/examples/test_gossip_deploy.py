"""`fl node` processes gossip over gRPC: the example's ring of eight ends with the simulation's nodes bit for bit, as
do two nodes with TLS and tokens, and nodes of every synchronous gossip strategy in threads; a node's inbox refuses
wrong tokens, non-peers, wrong sizes and rounds far ahead."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

from fl.cli import main
from fl.config import RunConfig, load_config
from fl.gossip_sim import GossipRun, gossip_setup
from fl.node import Node
from fl.scenario import build_data, build_model_fn
from transport.board import Refused
from transport.codecs.registry import make_codec
from transport.gossip_peer import GossipClient, GossipServer, Inbox

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gossip_deploy"
SECRET = b"gossip-test-secret"
SIZE = 10


def simulated_nodes(config: RunConfig) -> torch.Tensor:
    """Every node's model after the config's rounds, in the simulation with engine "nodes"."""
    config = dataclasses.replace(config, topology=dataclasses.replace(config.topology, engine="nodes"))
    data = build_data(config.data, config.seed)
    run = GossipRun(gossip_setup(config, data, build_model_fn(config.model, data)))
    for round in range(1, config.rounds + 1):
        run.run_round(round)
    return run.node_models()


def node_models(folder: Path, count: int) -> list[torch.Tensor]:
    return [torch.load(folder / f"node-{node}.pt")["params"] for node in range(count)]


def test_the_example_ring_of_eight_node_processes_equals_the_simulation(tmp_path) -> None:
    # Execute: the example, 8 `fl node` processes on 127.0.0.1 for 3 rounds
    completed = subprocess.run([sys.executable, str(EXAMPLE / "run_ring.py"), "--rounds", "3", "--out", str(tmp_path)],
                               capture_output=True, text=True, timeout=240)
    # Assert: the script's averaged comparison, and every node against its row of the simulation
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "equal the simulation's (torch.equal): True" in completed.stdout
    config = load_config(EXAMPLE / "ring.toml", ["rounds=3"])
    expected = simulated_nodes(config)
    for node, params in enumerate(node_models(tmp_path / "gossip_deploy", 8)):
        assert torch.equal(params, expected[node]), f"node {node}"


def run_nodes_in_threads(config: RunConfig) -> list[torch.Tensor]:
    """Every `Node` of the config in a thread of its own, messages handed over through their inboxes (no gRPC)."""
    data = build_data(config.data, config.seed)
    setup = gossip_setup(config, data, build_model_fn(config.model, data))
    nodes = [Node(setup, node) for node in range(data.num_clients)]  # one after the other: they seed torch
    inboxes = [node.inbox() for node in nodes]

    def deliver(receiver: int, round: int, step: int, sender: int, payload) -> None:
        while True:
            try:
                inbox = inboxes[receiver]
                return inbox.put(round, step, sender, inbox.decode(payload), payload.nbytes())
            except Refused as refusal:  # the receiver is rounds behind: try again, as a GossipClient does
                assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal
                time.sleep(0.01)

    def work(node: Node) -> None:
        def exchange(round: int, step: int, message, receivers: list[int], senders: list[int]):
            for receiver in receivers:
                deliver(receiver, round, step, node.node, message)
            return inboxes[node.node].wait_for(round, step, senders, timeout=60)

        for round in range(1, config.rounds + 1):
            node.run_round(round, exchange)

    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(work, nodes))
    return [node.model_params() for node in nodes]


@pytest.mark.parametrize("overrides", [
    ['strategy.order="consensus"', "topology.independent_init=true"],
    ['strategy.name="pushsum"', 'topology.name="directed_exponential"'],
    ['strategy.name="choco"', 'strategy.compression="topk:ratio=0.1"'],
    ['strategy.name="dfedsam_mgs"', "strategy.gossip_steps=2", 'topology.name="one_peer_exponential"'],
    ['strategy.name="variance_corrected"'],
], ids=["dpsgd-consensus", "pushsum", "choco", "dfedsam-mgs", "variance-corrected"])
def test_nodes_mixing_their_own_rows_equal_the_simulation(overrides) -> None:
    config = load_config(EXAMPLE / "ring.toml", ["rounds=2", *overrides])

    models = run_nodes_in_threads(config)

    expected = simulated_nodes(config)
    for node, params in enumerate(models):
        assert torch.equal(params, expected[node]), f"node {node}"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_nodes_with_tls_and_tokens_equal_the_simulation(tmp_path, certificate) -> None:
    # Prepare: a ring of two nodes (one edge), a secret, the certificate for 127.0.0.1
    cert, key = certificate
    (tmp_path / "secret").write_bytes(SECRET)
    overrides = ["data.num_clients=2", "sampling.per_round=2", "rounds=2", f'output_dir="{tmp_path}"']
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    # Execute
    nodes = [subprocess.Popen([sys.executable, "-m", "fl.cli", "node", "--config", str(EXAMPLE / "ring.toml"),
                               "--node-id", str(node), "--listen", addresses[node],
                               "--peers", f"{1 - node}={addresses[1 - node]}", "--tls-cert", cert, "--tls-key", key,
                               "--root-cert", cert, "--secret-file", str(tmp_path / "secret"),
                               *(item for override in overrides for item in ("--set", override))],
                              stderr=subprocess.PIPE, text=True) for node in range(2)]
    logs = [node.communicate(timeout=120)[1] for node in nodes]
    # Assert
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)
    assert all("round 2: train loss" in log for log in logs)
    expected = simulated_nodes(load_config(EXAMPLE / "ring.toml", overrides))
    for node, params in enumerate(node_models(tmp_path / "gossip_deploy", 2)):
        assert torch.equal(params, expected[node])


def test_an_asynchronous_gossip_strategy_is_refused(capsys) -> None:
    code = main(["node", "--config", str(EXAMPLE / "ring.toml"), "--node-id", "0", "--listen", "127.0.0.1:0",
                 "--peers", "1=127.0.0.1:1,7=127.0.0.1:7", "--set", 'strategy.name="async_gossip"'])

    assert code == 2
    assert "'async_gossip' is asynchronous" in capsys.readouterr().err


def test_peers_that_are_not_the_topologys_neighbours_stop_the_node(capsys) -> None:
    code = main(["node", "--config", str(EXAMPLE / "ring.toml"), "--node-id", "0", "--listen", "127.0.0.1:0",
                 "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"])

    error = capsys.readouterr().err
    assert code == 2
    assert "has neighbours [1, 7]; --peers gives [1, 2] (missing [7]) (not neighbours: [2])" in error


@pytest.fixture
def peer():
    """Node 0's inbox (in-neighbours 1 and 7, messages of SIZE float32) behind a server that requires tokens."""
    inbox = Inbox(0, lambda round, step: [1, 7], SIZE, torch.float32)
    server = GossipServer(inbox, "127.0.0.1:0", auth_secret=SECRET)
    yield inbox, f"127.0.0.1:{server.port}"
    server.stop(None)


class Sender:
    """One node's pushes to node 0 through a `GossipClient`."""

    def __init__(self, address: str, node: int, secret: bytes | None = SECRET, **options) -> None:
        self.node, self.receiver = node, options.pop("receiver", 0)
        self.client = GossipClient(address, secret=secret, timeout_seconds=options.pop("timeout_seconds", 5),
                                   **options)

    def send(self, round: int, step: int, message) -> int:
        return self.client.send(self.node, self.receiver, round, step, message)


def refusal(client: Sender, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        client.send(*args)
    client.client.close()
    return error.value.code()


def test_a_peers_message_arrives_bit_for_bit(peer) -> None:
    inbox, address = peer
    message = torch.randn(SIZE)

    received = Sender(address, 7).send(1, 0, message)

    assert received > 4 * SIZE
    assert torch.equal(inbox.wait_for(1, 0, [7], timeout=5)[7], message)


def test_a_receiver_the_server_does_not_keep_is_not_found(peer) -> None:
    _, address = peer

    assert refusal(Sender(address, 1, receiver=5), 1, 0, torch.zeros(SIZE)) == grpc.StatusCode.NOT_FOUND


def test_a_compressed_message_travels_as_its_payload_and_is_counted_per_sender() -> None:
    # Prepare: an inbox expecting top-k payloads, and one message compressed on the sender's side
    codec = make_codec("topk:ratio=0.1")
    size = 1000
    inbox = Inbox(0, lambda round, step: [1, 2], size, torch.float32, codec=codec)
    server = GossipServer(inbox, "127.0.0.1:0")
    payload, _ = codec.encode(torch.randn(size), {}, torch.Generator().manual_seed(0))
    one, two = (Sender(f"127.0.0.1:{server.port}", node, secret=None) for node in (1, 2))
    try:
        # Execute
        frames = one.send(1, 0, payload)
        wrong_codec = refusal(two, 1, 0, torch.zeros(size))  # the identity codec's payload
        # Assert: the receiver decodes the payload as the sender does, and counts its bytes, not the dense size
        assert torch.equal(inbox.wait_for(1, 0, [1], timeout=5)[1], codec.decode(payload, {})[0])
        assert inbox.take_bytes() == {1: payload.nbytes()}
        assert payload.nbytes() < frames < 4 * size / 2
        assert wrong_codec == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(None)


def test_a_wrong_or_missing_token_is_unauthenticated(peer) -> None:
    inbox, address = peer

    assert refusal(Sender(address, 1, secret=b"another secret"), 1, 0, torch.zeros(SIZE)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert refusal(Sender(address, 1, secret=None), 1, 0, torch.zeros(SIZE)) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(TimeoutError, match=r"from node\(s\) \[1\]"):
        inbox.wait_for(1, 0, [1], timeout=0.1)


def test_a_message_from_a_node_that_is_not_an_in_neighbour_is_refused(peer) -> None:
    _, address = peer

    assert refusal(Sender(address, 3), 1, 0, torch.zeros(SIZE)) == grpc.StatusCode.PERMISSION_DENIED


def test_wrong_sizes_repeats_old_rounds_and_rounds_far_ahead_are_refused(peer) -> None:
    inbox, address = peer
    one, seven = Sender(address, 1), Sender(address, 7)
    # Prepare: round 1 mixed, round 2 of node 1 held
    seven.send(1, 0, torch.zeros(SIZE))
    one.send(1, 0, torch.zeros(SIZE))
    inbox.wait_for(1, 0, [1, 7], timeout=5)
    one.send(2, 0, torch.zeros(SIZE))
    # Assert
    assert refusal(Sender(address, 7), 2, 0, torch.zeros(SIZE + 1)) == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal(Sender(address, 7), 2, 0, torch.zeros(SIZE, dtype=torch.float64)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert refusal(Sender(address, 7), 2, 0, torch.full((SIZE,), float("nan"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal(Sender(address, 1), 2, 0, torch.zeros(SIZE)) == grpc.StatusCode.ALREADY_EXISTS
    assert refusal(Sender(address, 7), 1, 0, torch.zeros(SIZE)) == grpc.StatusCode.FAILED_PRECONDITION
    assert refusal(Sender(address, 7, timeout_seconds=0.3), 4, 0, torch.zeros(SIZE)) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED  # retried until the client's timeout: node 0 holds rounds up to 3
    assert set(inbox.wait_for(2, 0, [1], timeout=5)) == {1}


def test_tls_carries_a_message(certificate) -> None:
    cert, key = certificate
    inbox = Inbox(0, lambda round, step: [1], SIZE, torch.float32)
    server = GossipServer(inbox, "127.0.0.1:0", tls=(cert, key))
    client = GossipClient(f"127.0.0.1:{server.port}", root_cert_path=cert, timeout_seconds=10)
    try:
        client.send(1, 0, 1, 0, torch.arange(SIZE, dtype=torch.float32))
        assert torch.equal(inbox.wait_for(1, 0, [1], timeout=5)[1], torch.arange(SIZE, dtype=torch.float32))
    finally:
        client.close()
        server.stop(None)


def test_a_peer_that_never_comes_up_times_out_naming_its_address() -> None:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    client = GossipClient(address, timeout_seconds=0.5)

    with pytest.raises(TimeoutError, match=f"node 3: the peer at {address} took no message of round 2"):
        client.send(3, 0, 2, 0, torch.zeros(SIZE))
    client.close()
