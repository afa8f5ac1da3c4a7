"""DiLoCo: inner AdamW instruction; outer lr 1 and momentum 0 equal FedAvg bit for bit."""

import numpy as np
import torch

from strategies.base import Federation, Reply
from strategies.registry import strategy_config

FED = Federation(num_clients=6, per_round=3, num_params=2000, num_trainable=1900)
SIZE = FED.num_params


def random_replies(seed: int) -> list[Reply]:
    gen = torch.Generator().manual_seed(seed)
    return [
        Reply(cid, torch.randn(SIZE, generator=gen) * 1e-2, int(n), {"loss": 0.0, "steps": 5, "lr": 1e-3})
        for cid, n in zip(range(3), torch.randint(1, 100, (3,), generator=gen))
    ]


def test_outer_lr_one_momentum_zero_is_fedavg() -> None:
    # Prepare
    diloco = strategy_config("diloco", {"outer_lr": 1.0, "outer_momentum": 0.0}).build(FED)
    fedavg = strategy_config("fedavg", {}).build(FED)
    x_diloco = x_fedavg = torch.randn(SIZE, generator=torch.Generator().manual_seed(9))
    # Execute: 3 rounds of random float32 updates, enough entries that float32 server math would differ
    for round in range(3):
        x_diloco, _ = diloco.aggregate(round, x_diloco, random_replies(round))
        x_fedavg, _ = fedavg.aggregate(round, x_fedavg, random_replies(round))
    # Assert
    assert torch.equal(x_diloco, x_fedavg)


def test_default_outer_nesterov_differs_from_fedavg() -> None:
    diloco = strategy_config("diloco", {}).build(FED)
    fedavg = strategy_config("fedavg", {}).build(FED)
    x = torch.zeros(SIZE)
    assert not torch.equal(diloco.aggregate(0, x, random_replies(0))[0], fedavg.aggregate(0, x, random_replies(0))[0])


def test_configure_sets_inner_adamw() -> None:
    strategy = strategy_config("diloco", {"inner_weight_decay": 0.1}).build(FED)
    instructions = strategy.configure(0, torch.zeros(SIZE), range(6), np.random.default_rng(3))
    assert len(instructions) == 3
    assert all(i.config == {"optimizer": "adamw", "weight_decay": 0.1} for i in instructions)
    default = strategy_config("diloco", {}).build(FED).configure(0, torch.zeros(SIZE), range(6), np.random.default_rng(3))
    assert default[0].config == {"optimizer": "adamw"}
