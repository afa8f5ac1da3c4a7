"""FedAvg: hand-computed weighted mean, one reply reproduced exactly, seeded sampling."""

import numpy as np
import torch

from strategies.base import Federation, Reply, sample_uniform
from strategies.registry import strategy_config

FED = Federation(num_clients=10, per_round=3, num_params=2, num_trainable=2)


def reply(cid: int, update: list[float], num_samples: int) -> Reply:
    return Reply(cid, torch.tensor(update), num_samples, {"loss": 0.0, "steps": 1, "lr": 0.1})


def test_weighted_mean_by_samples() -> None:
    # Prepare: (1*[1, 2] + 3*[5, -2]) / 4 = [4, -1]
    strategy = strategy_config("fedavg", {}).build(FED)
    global_params = torch.tensor([10.0, 20.0])
    # Execute
    new, _ = strategy.aggregate(0, global_params, iter([reply(0, [1.0, 2.0], 1), reply(1, [5.0, -2.0], 3)]))
    # Assert
    assert torch.equal(new, torch.tensor([14.0, 19.0]))


def test_server_lr_scales_the_mean() -> None:
    strategy = strategy_config("fedavg", {"server_lr": 0.5}).build(FED)
    new, _ = strategy.aggregate(0, torch.zeros(2), [reply(0, [2.0, -4.0], 7)])
    assert torch.equal(new, torch.tensor([1.0, -2.0]))


def test_one_reply_is_applied_exactly() -> None:
    # Prepare: awkward float32 values and weight
    gen = torch.Generator().manual_seed(0)
    global_params, update = torch.randn(50, generator=gen), torch.randn(50, generator=gen) * 1e-3
    strategy = strategy_config("fedavg", {}).build(FED)
    # Execute
    new, _ = strategy.aggregate(0, global_params, [Reply(3, update, 17, {"loss": 0.0, "steps": 1, "lr": 0.1})])
    # Assert: global + update, rounded once from float64
    assert new.dtype == torch.float32
    assert torch.equal(new, (global_params.double() + update.double()).float())


def test_sampling_distinct_from_available_and_seeded() -> None:
    available = [1, 4, 5, 7, 9]
    strategy = strategy_config("fedavg", {}).build(FED)
    first = [i.client_id for i in strategy.configure(0, torch.zeros(2), available, np.random.default_rng(42))]
    again = [i.client_id for i in strategy.configure(0, torch.zeros(2), available, np.random.default_rng(42))]
    assert len(first) == 3 and len(set(first)) == 3 and set(first) <= set(available)
    assert first == again


def test_sampling_takes_everyone_when_few_are_available() -> None:
    assert sample_uniform([8, 2], 3, np.random.default_rng(0)) == [2, 8]
