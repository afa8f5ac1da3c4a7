"""A gossip node against a poisoned neighbour and bad files: a finite message of 1e38 is refused naming its sender,
the node stays finite and its timeout says whose message was refused and why; `fl node --secret-file` refuses a
directory, an empty file and a missing one with one line."""

from __future__ import annotations

import grpc
import pytest
import torch

from fl.cli import main
from fl.config import SecurityConfig, load_config
from fl.gossip_sim import gossip_setup
from fl.node import Node
from fl.scenario import build_data, build_model_fn
from tests.examples.test_gossip_deploy import EXAMPLE
from transport.gossip_peer import GossipClient, GossipServer, Inbox


@pytest.fixture
def node_zero():
    """A function (config overrides) -> node 0 of a ring of three (in-neighbours 1 and 2), its inbox behind a
    GossipServer, and a client to it."""
    started = []

    def start(*overrides: str) -> tuple[Node, Inbox, GossipClient]:
        config = load_config(EXAMPLE / "ring.toml", ["data.num_clients=3", "sampling.per_round=3", *overrides])
        data = build_data(config.data, config.seed)
        node = Node(gossip_setup(config, data, build_model_fn(config.model, data)), 0)
        inbox = node.inbox()
        server = GossipServer(inbox, "127.0.0.1:0")
        client = GossipClient(f"127.0.0.1:{server.port}", timeout_seconds=5)
        started.append((server, client))
        return node, inbox, client

    yield start
    for server, client in started:
        client.close()
        server.stop(None)


def test_a_message_of_1e38_is_refused_and_the_receiver_stays_finite(node_zero) -> None:
    node, inbox, client = node_zero()
    numel, dtype = node.message_size()
    # Execute: node 1 sends a finite message of 1e38s, node 2 an honest one; node 0 runs its round
    with pytest.raises(grpc.RpcError) as refused:
        client.send(1, 0, 1, 0, torch.full((numel,), 1e38, dtype=dtype))
    client.send(2, 0, 1, 0, node.params)
    with pytest.raises(TimeoutError) as timeout:
        node.run_round(1, lambda round, step, message, to, senders: inbox.wait_for(round, step, senders, 0.5))
    # Assert
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 1's message of round 1 has L2 norm" in refused.value.details()
    assert "from node(s) [1] within 0.5 s; node 1's message was refused (INVALID_ARGUMENT: node 1's message of " \
           "round 1 has L2 norm" in str(timeout.value)
    assert torch.isfinite(node.model_params()).all()


def test_the_bound_is_relative_to_the_receivers_own_model_and_0_turns_it_off(node_zero) -> None:
    (node, inbox, client), (_, open_inbox, open_client) = node_zero(), node_zero("security.max_update_norm=0")
    numel, dtype = node.message_size()
    bound = SecurityConfig().max_update_norm * max(1.0, float(node.params.double().norm()))

    client.send(1, 0, 1, 0, torch.full((numel,), 0.99 * bound / numel**0.5, dtype=dtype))
    with pytest.raises(grpc.RpcError):
        client.send(2, 0, 1, 0, torch.full((numel,), 1.01 * bound / numel**0.5, dtype=dtype))
    open_client.send(1, 0, 1, 0, torch.full((numel,), 1e38, dtype=dtype))

    assert set(inbox._messages) == {(1, 0, 1)} and set(open_inbox._messages) == {(1, 0, 1)}


@pytest.mark.parametrize("kind, expected", [
    ("directory", "is a directory"), ("empty", "is empty"), ("missing", "cannot read the secret file"),
])
def test_a_secret_file_that_is_a_directory_empty_or_missing_is_refused(tmp_path, capsys, kind, expected) -> None:
    path = tmp_path / "secret"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b" \n")

    code = main(["node", "--config", str(EXAMPLE / "ring.toml"), "--node-id", "0", "--listen", "127.0.0.1:0",
                 "--peers", "1=127.0.0.1:1,7=127.0.0.1:7", "--secret-file", str(path)])

    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("fl: error: ") and expected in error[0]
