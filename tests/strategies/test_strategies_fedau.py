"""FedAU (Wang and Ji, ICLR 2024): online interval estimates, cutoff K, and 1/N normalisation."""

import numpy as np
import torch

from strategies.base import Federation, Reply
from strategies.fedau import ParticipationIntervals
from strategies.registry import strategy_config
from tests.strategies.strategy_driver import federation_for, heterogeneous_quadratic, run_rounds


def observe_pattern(intervals: ParticipationIntervals, pattern: list[list[int]]) -> list[np.ndarray]:
    """Feed one participation mask per round; return the weights in force at the start of each round."""
    weights = []
    for row in pattern:
        weights.append(intervals.weights())
        intervals.observe(np.array(row, dtype=bool))
    return weights


def test_every_third_round_gives_omega_three() -> None:
    # Prepare: client 0 takes part in rounds 2, 5, 8; client 1 in every round; client 2 never (no cutoff reached)
    pattern = [[int(t % 3 == 2), 1, 0] for t in range(9)]
    # Execute
    weights = observe_pattern(ParticipationIntervals(3, cutoff=100), pattern)
    # Assert: 1 until a first interval is recorded; the interval ending in round t counts from round t + 1
    assert [w[0] for w in weights] == [1, 1, 1, 3, 3, 3, 3, 3, 3]
    assert all(w[1] == 1 for w in weights)
    assert all(w[2] == 1 for w in weights)


def test_cutoff_records_k() -> None:
    # Prepare: K = 2; client 0 every third round (rounds 2, 5), client 1 never
    pattern = [[int(t % 3 == 2), 0] for t in range(6)]
    # Execute
    weights = observe_pattern(ParticipationIntervals(2, cutoff=2), pattern)
    # Assert: client 0 records 2 (cut off) at round 1, 1 at round 2, 2 at round 4, 1 at round 5
    assert [w[0] for w in weights] == [1, 1, 2, 1.5, 1.5, 5 / 3]
    assert [w[1] for w in weights] == [1, 1, 2, 2, 2, 2]


def test_update_is_omega_weighted_sum_over_all_clients() -> None:
    # Prepare: 4 clients; client 0 has omega 3 (intervals 3), client 1 omega 1
    strategy = strategy_config("fedau", {"cutoff": 10}).build(Federation(4, 2, 1, 1))
    observe_pattern(strategy.intervals, [[0, 1, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    metrics = {"loss": 0.0, "steps": 1, "lr": 0.1}
    replies = [Reply(0, torch.tensor([2.0]), 50, metrics), Reply(1, torch.tensor([4.0]), 1, metrics)]
    # Execute
    new, _ = strategy.aggregate(3, torch.tensor([1.0]), replies)
    # Assert: 1 + (3 * 2 + 1 * 4) / 4 = 3.5, sample counts ignored
    assert torch.allclose(new, torch.tensor([3.5]))


def test_full_participation_is_plain_averaging() -> None:
    # Prepare: every client every round, equal sample counts in the driver
    problem = heterogeneous_quadratic(num_clients=3, dim=2, seed=2)
    fed = federation_for(problem)
    # Execute
    fedau = run_rounds(strategy_config("fedau", {"cutoff": 5}).build(fed), problem, 6, 3, 0.1)
    fedavg = run_rounds(strategy_config("fedavg", {}).build(fed), problem, 6, 3, 0.1)
    # Assert
    assert torch.equal(fedau, fedavg)


def test_round_without_replies_keeps_the_model_and_counts() -> None:
    strategy = strategy_config("fedau", {"cutoff": 3}).build(Federation(2, 2, 1, 1))
    new, _ = strategy.aggregate(0, torch.tensor([7.0]), [])
    assert torch.equal(new, torch.tensor([7.0]))
    assert strategy.intervals.open_interval.tolist() == [1, 1]
