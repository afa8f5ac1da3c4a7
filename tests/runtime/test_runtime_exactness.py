"""Oracles for the runtime: FedAvg with one client is plain SGD; FedProx(mu=0) and DiLoCo(lr 1, no momentum) are FedAvg."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fl.scenario import build_data, build_model_fn
from fl.seeding import INIT, TRAINING, derive_seed
from fl.simulation import run_simulation
from tests.conftest import small_config


def centralized_sgd(config, rounds: int) -> torch.Tensor:
    """Plain torch: one model, torch.optim.SGD, the client's data in the same shuffled order, one epoch a round."""
    data = build_data(config.data, config.seed)
    torch.manual_seed(derive_seed(config.seed, INIT))
    model = build_model_fn(config.model, data)()
    x, y = (torch.from_numpy(a) for a in data.client_train(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.client.lr)
    for round in range(1, rounds + 1):
        generator = torch.Generator().manual_seed(derive_seed(config.seed, round, 0, TRAINING))
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), config.client.batch_size):
            batch = order[start : start + config.client.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_fedavg_with_one_client_equals_centralized_sgd_bit_for_bit(tmp_path):
    config = small_config(tmp_path, "data.num_clients=1", "sampling.per_round=1", "rounds=3",
                          'client.update_dtype="float64"')

    result = run_simulation(config, write=False, show_progress=False)

    assert torch.equal(result.global_params, centralized_sgd(config, rounds=3))


def test_fedavg_with_float32_updates_stays_within_rounding_of_centralized_sgd(tmp_path):
    config = small_config(tmp_path, "data.num_clients=1", "sampling.per_round=1", "rounds=3")

    result = run_simulation(config, write=False, show_progress=False)

    assert torch.allclose(result.global_params, centralized_sgd(config, rounds=3), atol=1e-6)


def test_fedprox_with_mu_zero_equals_fedavg_bit_for_bit(tmp_path):
    fedavg = run_simulation(small_config(tmp_path), write=False, show_progress=False)

    fedprox = run_simulation(small_config(tmp_path, 'strategy.name="fedprox"', "strategy.mu=0.0"),
                             write=False, show_progress=False)

    assert torch.equal(fedprox.global_params, fedavg.global_params)


def test_fedprox_with_positive_mu_differs_from_fedavg(tmp_path):
    fedavg = run_simulation(small_config(tmp_path), write=False, show_progress=False)

    fedprox = run_simulation(small_config(tmp_path, 'strategy.name="fedprox"', "strategy.mu=0.5"),
                             write=False, show_progress=False)

    assert not torch.equal(fedprox.global_params, fedavg.global_params)


def test_diloco_with_outer_lr_one_and_no_momentum_equals_fedavg_with_adamw(tmp_path):
    inner = ['client.optimizer="adamw"', "client.lr=0.001"]
    fedavg = run_simulation(small_config(tmp_path, *inner), write=False, show_progress=False)

    diloco = run_simulation(
        small_config(tmp_path, *inner, 'strategy.name="diloco"', "strategy.outer_lr=1.0", "strategy.outer_momentum=0.0"),
        write=False, show_progress=False,
    )

    assert torch.equal(diloco.global_params, fedavg.global_params)
