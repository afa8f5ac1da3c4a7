"""Decentralized runs on a worker pool: nodes train as tasks on the channel, like virtual clients, and every path
(in-process, local gRPC, Ray with 1 or 2 workers, gRPC or direct) gives the in-process "nodes" engine's bits."""

from __future__ import annotations

import pytest
import torch

import fl.worker
from fl.simulation import run_simulation
from fl.worker import NODE_START
from tests.conftest import small_config

NODES = ("data.num_clients=8", "client.steps=3", "rounds=2", 'topology.engine="nodes"',
         "topology.independent_init=true")
PATHS = {
    "in-process": ('runtime.backend="local"', 'transport.channel="direct"'),
    "local, grpc": ('runtime.backend="local"', 'transport.channel="grpc"'),
    "ray 1 worker, grpc": ('runtime.backend="ray"', "runtime.num_workers=1", 'transport.channel="grpc"'),
    "ray 2 workers, direct": ('runtime.backend="ray"', "runtime.num_workers=2", 'transport.channel="direct"'),
}


@pytest.mark.parametrize("strategy", ['strategy.name="dpsgd"', 'strategy.name="dfedsam"'])
def test_every_path_gives_the_in_process_nodes_engine_bits(tmp_path, ray_session, strategy) -> None:
    results = {name: run_simulation(small_config(tmp_path, strategy, *NODES, *settings), show_progress=False,
                                    write=False) for name, settings in PATHS.items()}

    reference = results["in-process"]
    for name, result in results.items():
        assert torch.equal(result.global_params, reference.global_params), name
        assert [m["consensus_distance"] for m in result.history] == \
            [m["consensus_distance"] for m in reference.history], name
        assert [(m["train_loss"], m["bytes_up"]) for m in result.history] == \
            [(m["train_loss"], m["bytes_up"]) for m in reference.history], name  # gossip bytes only, per edge


def test_on_a_pool_each_node_trains_from_its_own_parameters_as_a_task(tmp_path, monkeypatch) -> None:
    # Prepare: record the tasks the in-process worker of the local gRPC path runs, and what their results keep
    seen = []
    train = fl.worker.Worker._train

    def recording(self, task, global_params):
        result = train(self, task, global_params)
        seen.append((task.version, task.client_id, NODE_START in task.state, NODE_START in result.state))
        return result

    monkeypatch.setattr(fl.worker.Worker, "_train", recording)
    # Execute
    run_simulation(small_config(tmp_path, 'strategy.name="dpsgd"', *NODES,
                                *PATHS["local, grpc"]), show_progress=False, write=False)
    # Assert: one task per node and round, each with the node's start, which never comes back
    assert seen == [(round, node, True, False) for round in (1, 2) for node in range(8)]
