"""The local training loop and its pieces: batching, steps, optimizers, evaluation, load balancing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl.pool import balance
from fl.simulation import run_simulation
from fl.training import LocalTrainer, TrainConfig, batch_indices
from fl.models import mlp
from strategies.base import ClientHook
from tests.conftest import small_config


def test_epochs_cover_every_sample_once_per_epoch_in_batches():
    config = TrainConfig(epochs=2, batch_size=4)

    batches = list(batch_indices(10, config, torch.Generator().manual_seed(0), torch.device("cpu")))

    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))


def test_steps_take_exactly_that_many_batches_across_epochs():
    config = TrainConfig(steps=7, batch_size=4)

    batches = list(batch_indices(10, config, torch.Generator().manual_seed(0), torch.device("cpu")))

    assert len(batches) == 7


def test_trainer_update_is_local_minus_global_and_counts_steps():
    torch.manual_seed(0)
    trainer = LocalTrainer(mlp(5, 3, hidden=(4,)), torch.device("cpu"))
    start = trainer.spec.flatten(trainer.model).clone()
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))

    outcome = trainer.train(start, x, y, TrainConfig(batch_size=8, lr=0.1), seed=1, hook=ClientHook())

    assert outcome.steps == 3
    assert torch.equal(outcome.update, trainer.spec.flatten(trainer.model) - start)
    assert outcome.update.abs().sum() > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_lowers_the_training_loss(optimizer):
    torch.manual_seed(0)
    trainer = LocalTrainer(mlp(5, 3, hidden=(16,)), torch.device("cpu"))
    start = trainer.spec.flatten(trainer.model).clone()
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    config = TrainConfig(epochs=30, batch_size=16, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)

    first = trainer.train(start, x, y, TrainConfig(steps=1, batch_size=64), seed=0, hook=ClientHook()).loss
    trained = trainer.train(start, x, y, config, seed=0, hook=ClientHook())

    assert trained.loss < 0.6 * first


def test_unknown_override_names_the_allowed_settings():
    with pytest.raises(ValueError, match="unknown client setting 'lrr'; allowed: batch_size"):
        TrainConfig().with_overrides({"lrr": 0.1})


def test_balance_puts_longest_tasks_first_onto_the_least_loaded_worker():
    assignment = balance([5.0, 1.0, 4.0, 3.0, 3.0], num_workers=2)

    loads = [sum(c for c, w in zip([5.0, 1.0, 4.0, 3.0, 3.0], assignment) if w == k) for k in range(2)]
    assert sorted(loads) == [8.0, 8.0]


def test_digits_with_a_batchnorm_cnn_learns_and_aggregates_buffers(tmp_path):
    config = small_config(tmp_path, 'data.name="digits"', 'data.partition="iid"', "data.num_clients=10", "sampling.per_round=10",
                          'model.name="cnn"', "rounds=4", "client.epochs=2", "client.lr=0.1")

    result = run_simulation(config, write=False, show_progress=False)

    assert result.history[-1]["test_accuracy"] > 0.4  # chance is 0.1; 0.57 measured
    running_means = [e for e in result.spec.entries if e.name.endswith("running_mean")]
    assert running_means and all(result.global_params[e.offset : e.end].abs().sum() > 0 for e in running_means)


@pytest.mark.slow
def test_a_thousand_clients_with_a_hundred_per_round_on_ray(tmp_path, ray_session):
    config = small_config(tmp_path, "data.num_clients=1000", "sampling.per_round=100", "rounds=2",
                          'runtime.backend="ray"', "model.hidden=[200, 200]", "client.batch_size=32")

    result = run_simulation(config, write=False, show_progress=False)

    assert [m["clients"] for m in result.history] == [100, 100]
    assert np.isfinite(result.history[-1]["test_loss"])
