"""Asynchronous gossip on the virtual clock: nodes wake by their device profiles, send to one random neighbour each,
and the merges alone drive the nodes to consensus."""

from __future__ import annotations

import torch

from fl.simulation import run_simulation
from tests.conftest import small_config

ASYNC = ('strategy.name="async_gossip"', "data.num_clients=8", "client.steps=2", "rounds=4",
         'devices.compute="lognormal:median=0.001,sigma=1"')


def run(tmp_path, *overrides: str):
    return run_simulation(small_config(tmp_path, *ASYNC, *overrides), show_progress=False, write=False)


def test_each_wake_up_sends_one_model_and_the_clock_advances(tmp_path) -> None:
    result = run(tmp_path, 'devices.dropout="constant:value=0.2"')
    message = 4 * result.global_params.numel()
    times = [m["virtual_time"] for m in result.history]
    assert times == sorted(times) and times[0] > 0
    assert all(m["bytes_up"] == m["clients"] * message and m["clients"] + m["dropped"] == 8 for m in result.history)
    assert sum(m["dropped"] for m in result.history) > 0


def test_the_same_seed_gives_the_same_run(tmp_path) -> None:
    first, second = run(tmp_path), run(tmp_path)
    assert torch.equal(first.global_params, second.global_params)
    assert [m["virtual_time"] for m in first.history] == [m["virtual_time"] for m in second.history]


def test_merges_alone_bring_independent_nodes_to_consensus(tmp_path) -> None:
    # Prepare: nodes start from different models and barely train (lr 1e-9): only the merges move them
    result = run(tmp_path, "topology.independent_init=true", "client.lr=1e-9", "rounds=12", 'topology.name="complete"')
    distances = [m["consensus_distance"] for m in result.history]
    assert distances[-1] < 0.05 * distances[0]
