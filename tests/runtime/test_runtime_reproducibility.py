"""Same seed, same result: Ray vs in-process, twice with one seed, one worker vs two."""

from __future__ import annotations

import torch

from fl.simulation import run_simulation
from tests.conftest import small_config

STATEFUL = ['strategy.name="scaffold"']  # client state travels through the store: the hardest case to reproduce


def final_params(config) -> torch.Tensor:
    return run_simulation(config, write=False, show_progress=False).global_params


def test_ray_path_and_in_process_path_give_bit_identical_parameters(tmp_path, ray_session):
    local = final_params(small_config(tmp_path, *STATEFUL))

    on_ray = final_params(small_config(tmp_path, *STATEFUL, 'runtime.backend="ray"', "runtime.num_workers=2"))

    assert torch.equal(local, on_ray)


def test_one_worker_and_two_workers_give_bit_identical_parameters(tmp_path, ray_session):
    one = final_params(small_config(tmp_path, 'runtime.backend="ray"', "runtime.num_workers=1"))

    two = final_params(small_config(tmp_path, 'runtime.backend="ray"', "runtime.num_workers=2"))

    assert torch.equal(one, two)


def test_same_seed_twice_is_bit_identical_and_another_seed_differs(tmp_path):
    first = final_params(small_config(tmp_path, *STATEFUL, "seed=3"))
    second = final_params(small_config(tmp_path, *STATEFUL, "seed=3"))

    other = final_params(small_config(tmp_path, *STATEFUL, "seed=4"))

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_availability_sampling_is_reproducible(tmp_path):
    settings = ['sampling.availability="uniform"', "sampling.availability_low=0.3", 'strategy.name="fedau"']

    first = run_simulation(small_config(tmp_path, *settings), write=False, show_progress=False)
    second = run_simulation(small_config(tmp_path, *settings), write=False, show_progress=False)

    assert torch.equal(first.global_params, second.global_params)
    assert [m["clients"] for m in first.history] == [m["clients"] for m in second.history]
