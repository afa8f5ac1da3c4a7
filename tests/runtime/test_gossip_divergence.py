"""A node whose own training diverges stops a decentralized run with one line naming the round and the node, and a
learning-rate hint (exit 2), on every gossip path: the vectorized engine, nodes in this process, node hosts over
gRPC (in this process or Ray actors), nodes trained on a Ray pool, asynchronous gossip and an `fl node` process;
never as a neighbour's refused message."""

from __future__ import annotations

import re

import pytest

from fl.cli import main
from tests.examples.test_gossip_deploy import EXAMPLE

DIVERGED = re.compile(r"fl: error: round 1: node \d+'s training diverged \(.+\): try a smaller client\.lr")


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("overrides", [
    ['topology.engine="vectorized"', 'transport.channel="direct"'],
    ['transport.channel="direct"'],
    ['transport.channel="grpc"'],
    ['strategy.name="async_gossip"'],
], ids=["vectorized", "nodes-in-process", "node-hosts-grpc", "async-gossip"])
def test_a_diverging_run_ends_with_one_line_naming_round_and_node(tmp_path, capsys, overrides) -> None:
    sets = ["client.lr=1000", f'output_dir="{tmp_path}"', *overrides]

    code = main(["run", str(EXAMPLE / "ring.toml"), "--quiet", *(item for one in sets for item in ("--set", one))])

    assert code == 2
    assert DIVERGED.fullmatch(one_line(capsys))


@pytest.mark.parametrize("channel", ["grpc", "direct"], ids=["ray-node-hosts", "ray-pool"])
def test_on_ray_the_actors_error_arrives_as_the_same_one_line(tmp_path, capsys, ray_session, channel) -> None:
    sets = ["client.lr=1000", f'output_dir="{tmp_path}"', 'runtime.backend="ray"', "runtime.num_workers=2",
            f'transport.channel="{channel}"']

    code = main(["run", str(EXAMPLE / "ring.toml"), "--quiet", *(item for one in sets for item in ("--set", one))])

    assert code == 2
    assert DIVERGED.fullmatch(one_line(capsys))


def test_nan_training_names_its_loss(tmp_path, capsys) -> None:
    sets = ["client.lr=1e30", "security.max_update_norm=0", f'output_dir="{tmp_path}"', 'transport.channel="direct"']

    code = main(["run", str(EXAMPLE / "ring.toml"), "--quiet", *(item for one in sets for item in ("--set", one))])

    assert code == 2
    assert one_line(capsys) == "fl: error: round 1: node 0's training diverged (loss nan): try a smaller client.lr"


def test_a_diverging_fl_node_stops_before_it_sends(capsys) -> None:
    # Peers that are not up: the node's own training of round 1 diverges before it sends anything
    code = main(["node", "--config", str(EXAMPLE / "ring.toml"), "--node-id", "3", "--listen", "127.0.0.1:0",
                 "--peers", "2=127.0.0.1:1,4=127.0.0.1:2", "--set", "client.lr=1000"])

    line = one_line(capsys)
    assert code == 2
    assert DIVERGED.fullmatch(line) and line.startswith("fl: error: round 1: node 3's training diverged")
