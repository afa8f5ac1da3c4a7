"""Decentralized runs end to end: the vectorized engine equals node-by-node training, D-PSGD on the complete graph
is one FedAvg step per round, bytes per edge, reproducibility, and better-connected graphs reach consensus faster."""

from __future__ import annotations

import json

import pytest
import torch

from fl.config import ConfigError
from fl.params import ParamSpec
from fl.scenario import build_data, build_model_fn
from fl.seeding import INIT, TRAINING, derive_seed
from fl.simulation import run_simulation
from fl.training import LocalTrainer
from strategies.base import ClientHook
from tests.conftest import small_config

GOSSIP = ('strategy.name="dpsgd"', "data.num_clients=8", "client.steps=4", "rounds=3")


def run(tmp_path, *overrides: str, write: bool = False):
    return run_simulation(small_config(tmp_path, *GOSSIP, *overrides), show_progress=False, write=write)


def test_the_vectorized_engine_equals_training_node_by_node(tmp_path) -> None:
    vectorized = run(tmp_path, 'topology.engine="vectorized"')
    nodes = run(tmp_path, 'topology.engine="nodes"')
    assert torch.allclose(vectorized.global_params, nodes.global_params, rtol=0, atol=1e-6)
    for fast, slow in zip(vectorized.history, nodes.history):
        assert fast["consensus_distance"] == pytest.approx(slow["consensus_distance"], rel=1e-4)
        assert fast["test_accuracy"] == pytest.approx(slow["test_accuracy"], abs=1e-3)


def test_dpsgd_on_the_complete_graph_is_a_fedavg_step_with_uniform_weights(tmp_path) -> None:
    # Prepare: one round on the complete graph (weights 1/n), node by node, float64 updates
    config = small_config(tmp_path, *GOSSIP, "rounds=1", 'topology.name="complete"', 'topology.engine="nodes"',
                          'client.update_dtype="float64"')
    # Execute
    result = run_simulation(config, show_progress=False, write=False)
    # Assert: the mean of the nodes' own local training from the shared initial model
    data = build_data(config.data, config.seed)
    model_fn = build_model_fn(config.model, data)
    torch.manual_seed(derive_seed(config.seed, INIT))
    initial = ParamSpec.from_module(model := model_fn()).flatten(model)
    trainer = LocalTrainer(model_fn(), torch.device("cpu"))
    updates = []
    for node in range(data.num_clients):
        lo, hi = data.offsets[node], data.offsets[node + 1]
        x, y = torch.from_numpy(data.x[lo:hi]), torch.from_numpy(data.y[lo:hi])
        updates.append(trainer.train(initial, x, y, config.client, derive_seed(config.seed, 1, node, TRAINING),
                                     ClientHook()).update)
    expected = initial.double() + torch.stack(updates).mean(0)
    assert torch.allclose(result.global_params.double(), expected, rtol=0, atol=1e-6)
    assert result.history[0]["consensus_distance"] < 1e-10  # every node holds the same model
    assert result.history[0]["spectral_gap"] == pytest.approx(1.0)


def test_messages_are_counted_per_edge_and_written(tmp_path) -> None:
    result = run(tmp_path, write=True)
    message = 4 * result.global_params.numel()  # float32 parameters
    edges = json.loads((result.run_dir / "edges.json").read_text())
    assert sorted(edges) == sorted(f"{i}->{(i + d) % 8}" for i in range(8) for d in (1, 7))  # the ring, both ways
    assert set(edges.values()) == {3 * message}
    assert all(m["bytes_up"] == 16 * message for m in result.history)


def test_compressed_gossip_moves_fewer_bytes(tmp_path) -> None:
    exact = run(tmp_path, 'strategy.name="choco"', 'strategy.compression="identity"', "strategy.gamma=1.0")
    topk = run(tmp_path, 'strategy.name="choco"', 'strategy.compression="topk:ratio=0.05"')
    assert topk.history[-1]["bytes_up"] < 0.2 * exact.history[-1]["bytes_up"]


def test_the_same_seed_gives_the_same_nodes(tmp_path) -> None:
    first, second = run(tmp_path, 'strategy.name="pushsum"', 'topology.name="directed_exponential"'), \
        run(tmp_path, 'strategy.name="pushsum"', 'topology.name="directed_exponential"')
    assert torch.equal(first.global_params, second.global_params)
    assert first.history == [dict(m, wall_seconds=s["wall_seconds"]) for m, s in zip(second.history, first.history)]


def test_bad_topologies_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="topology 'regular': missing parameter 'degree'"):
        small_config(tmp_path, *GOSSIP, 'topology.name="regular"')
    with pytest.raises(ConfigError, match="runs as a simulation"):
        small_config(tmp_path, *GOSSIP, 'runtime.backend="deploy"')


def test_better_connected_graphs_reach_consensus_faster(tmp_path) -> None:
    """32 nodes on Dirichlet(0.3) digits: the consensus distance after a few rounds orders ring > exponential >
    complete."""
    distances = {}
    for name in ("ring", "exponential", "complete"):
        result = run_simulation(small_config(
            tmp_path, 'strategy.name="dpsgd"', 'data.name="digits"', "data.num_clients=32", "sampling.per_round=1",
            'data.partition="dirichlet"', "data.dirichlet_alpha=0.3", "client.steps=5", "rounds=6", "eval.every=0",
            f'topology.name="{name}"'), show_progress=False, write=False)
        distances[name] = result.history[-1]["consensus_distance"]
    assert distances["ring"] > distances["exponential"] > distances["complete"]


@pytest.mark.slow
def test_a_thousand_nodes_of_the_quickstart_mlp_on_a_ring(tmp_path) -> None:
    """The vectorized engine: 1,000 nodes of the MLP 60-200-200-10 on Synthetic(1,1), about 12 s per round."""
    config = small_config(tmp_path, 'strategy.name="dpsgd"', "data.num_clients=1000", "sampling.per_round=10",
                          "model.hidden=[200, 200]", "client.steps=5", "rounds=2", "eval.every=2")
    result = run_simulation(config, show_progress=False, write=False)
    assert result.history[-1]["clients"] == 1000 and "node_accuracy_min" in result.history[-1]
    assert all(m["bytes_up"] == 2 * 1000 * 4 * result.global_params.numel() for m in result.history)
