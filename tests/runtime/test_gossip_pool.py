"""Decentralized runs off the run's own process: on the gRPC channel the nodes live on hosts (this process, or Ray
worker actors) that send each other their messages over gRPC; on Ray's direct channel they train as tasks on the
pool. Every path gives the in-process "nodes" engine's bits, and the bytes of every edge."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fl.worker
from fl.gossip_sim import GossipRun, gossip_setup
from fl.pool import LocalPool
from fl.scenario import build_data, build_model_fn
from fl.simulation import run_simulation
from fl.worker import NODE_START, Worker
from tests.conftest import small_config
from transport import gossip_peer
from transport.inprocess import InProcessChannel

NODES = ("data.num_clients=8", "client.steps=3", "rounds=2", 'topology.engine="nodes"',
         "topology.independent_init=true")
PATHS = {
    "in-process": ('runtime.backend="local"', 'transport.channel="direct"'),
    "local, grpc": ('runtime.backend="local"', 'transport.channel="grpc"'),
    "ray 1 worker, grpc": ('runtime.backend="ray"', "runtime.num_workers=1", 'transport.channel="grpc"'),
    "ray 2 workers, grpc": ('runtime.backend="ray"', "runtime.num_workers=2", 'transport.channel="grpc"'),
    "ray 2 workers, direct": ('runtime.backend="ray"', "runtime.num_workers=2", 'transport.channel="direct"'),
}


@pytest.mark.parametrize("strategy, paths", [
    (('strategy.name="dpsgd"',), PATHS),
    (('strategy.name="choco"', 'strategy.compression="topk:ratio=0.1"'), PATHS),
    (('strategy.name="dfedsam_mgs"', "strategy.gossip_steps=2"), ["in-process", "local, grpc"]),
    (('strategy.name="pushsum"', 'topology.name="directed_exponential"'), ["in-process", "local, grpc"]),
], ids=["dpsgd", "choco-topk", "dfedsam-mgs", "pushsum"])
def test_every_path_gives_the_in_process_nodes_engine_bits(tmp_path, ray_session, strategy, paths) -> None:
    results = {name: run_simulation(small_config(tmp_path, *strategy, *NODES, *PATHS[name], f'name="{index}"'),
                                    show_progress=False)
               for index, name in enumerate(paths)}

    reference = results["in-process"]
    reference_edges = json.loads((reference.run_dir / "edges.json").read_text())
    for name, result in results.items():
        assert torch.equal(result.global_params, reference.global_params), name
        assert [m["consensus_distance"] for m in result.history] == \
            [m["consensus_distance"] for m in reference.history], name
        assert [(m["train_loss"], m["bytes_up"]) for m in result.history] == \
            [(m["train_loss"], m["bytes_up"]) for m in reference.history], name  # gossip bytes only, per edge
        assert json.loads((result.run_dir / "edges.json").read_text()) == reference_edges, name


def test_on_the_grpc_channel_every_message_crosses_grpc_once_per_edge(tmp_path, monkeypatch) -> None:
    # Prepare: count the calls the hosts' gossip servers answer, and the payload bytes each one carried
    calls: list[tuple[int, int]] = []
    put = gossip_peer.Inbox.put

    def counting(self, round, step, sender, message, nbytes=None):
        calls.append((sender, self.node))
        return put(self, round, step, sender, message, nbytes)

    monkeypatch.setattr(gossip_peer.Inbox, "put", counting)
    config = small_config(tmp_path, 'strategy.name="choco"', 'strategy.compression="topk:ratio=0.1"',
                          'topology.name="torus"', "data.num_clients=9", "client.steps=1", "rounds=2",
                          'topology.engine="nodes"', *PATHS["local, grpc"])
    # Execute
    result = run_simulation(config, show_progress=False)
    # Assert: a 3x3 torus has 36 directed edges; each carried one compressed message a round, counted where it arrived
    edges = json.loads((result.run_dir / "edges.json").read_text())
    assert sorted(calls) == sorted((s, r) for s, r in (map(int, key.split("->")) for key in edges)
                                   for _ in range(2))
    assert len(edges) == 36
    num_params = result.global_params.numel()
    k = math.ceil(0.1 * num_params)
    assert set(edges.values()) == {2 * k * (4 + 4)}  # two rounds of k float32 values and k int32 indices
    assert sum(m["bytes_up"] for m in result.history) == sum(edges.values())


def test_auto_keeps_few_nodes_on_hosts_and_many_vectorized(tmp_path) -> None:
    from fl.gossip_hosts import LocalHosts

    def engine(nodes: int) -> str:
        config = small_config(tmp_path, 'strategy.name="dpsgd"', f"data.num_clients={nodes}", "sampling.per_round=4",
                              "client.steps=2")
        data = build_data(config.data, config.seed)
        run = GossipRun(gossip_setup(config, data, build_model_fn(config.model, data)), make_hosts=LocalHosts)
        try:
            return run.engine
        finally:
            run.close()

    assert engine(8) == "nodes"
    assert engine(100) == "vectorized"


def test_on_a_pool_each_node_trains_from_its_own_parameters_as_a_task(tmp_path, monkeypatch) -> None:
    # Prepare: a run on a local pool over the direct channel, recording the tasks its worker runs
    seen = []
    train = fl.worker.Worker._train

    def recording(self, task, global_params):
        result = train(self, task, global_params)
        seen.append((task.version, task.client_id, NODE_START in task.state, NODE_START in result.state))
        return result

    monkeypatch.setattr(fl.worker.Worker, "_train", recording)
    config = small_config(tmp_path, 'strategy.name="dpsgd"', *NODES)
    data = build_data(config.data, config.seed)
    run = GossipRun(gossip_setup(config, data, build_model_fn(config.model, data)), InProcessChannel,
                    lambda setup, endpoint: LocalPool(Worker(setup, endpoint)))
    # Execute
    try:
        for round in (1, 2):
            run.run_round(round)
    finally:
        run.close()
    # Assert: one task per node and round, each with the node's start, which never comes back
    assert seen == [(round, node, True, False) for round in (1, 2) for node in range(8)]
