"""The virtual clock by hand: event order, the round schedule (kept, late, dropped, its end), and the samples a task
processes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl.clock import ARRIVE, DROP, Attempt, EventQueue, schedule_round
from fl.training import TrainConfig, batch_indices, samples_processed


def test_events_pop_by_time_then_kind_then_client_then_sequence() -> None:
    queue = EventQueue()
    for time, kind, client in [(2.0, DROP, 1), (1.0, DROP, 0), (1.0, ARRIVE, 5), (1.0, ARRIVE, 3), (1.0, ARRIVE, 3)]:
        queue.push(time, kind, client)

    popped = [(e.time, e.kind, e.client_id, e.sequence) for e in (queue.pop() for _ in range(len(queue)))]

    assert popped == [(1.0, ARRIVE, 3, 3), (1.0, ARRIVE, 3, 4), (1.0, ARRIVE, 5, 2), (1.0, DROP, 0, 1), (2.0, DROP, 1, 0)]
    assert queue.now == 2.0


def test_the_clock_never_goes_back() -> None:
    queue = EventQueue(now=5.0)
    with pytest.raises(ValueError, match="cannot come before"):
        queue.push(4.0, ARRIVE, 0)


def test_five_selected_four_kept_the_slowest_late() -> None:
    """Speeds 1..5 s, per_round 4 (over-selection 1.3 selects five): the round lasts 4 s."""
    schedule = schedule_round(10.0, [Attempt(c, float(c + 1)) for c in range(5)], per_round=4)

    assert schedule.kept == [0, 1, 2, 3] and schedule.late == [4] and schedule.dropped == []
    assert (schedule.start, schedule.end) == (10.0, 14.0)
    assert schedule.events == [(11.0, ARRIVE, 0), (12.0, ARRIVE, 1), (13.0, ARRIVE, 2), (14.0, ARRIVE, 3),
                               (15.0, ARRIVE, 4)]


def test_a_deadline_cuts_the_two_slowest_of_five_and_ends_the_round() -> None:
    schedule = schedule_round(0.0, [Attempt(c, float(c + 1)) for c in range(5)], per_round=5, deadline=3.5)

    assert schedule.kept == [0, 1, 2] and schedule.late == [3, 4] and schedule.end == 3.5


def test_arrivals_are_kept_in_arrival_order_and_failures_dropped() -> None:
    attempts = [Attempt(0, 3.0), Attempt(1, 1.0), Attempt(2, 2.0, fails_at=0.5), Attempt(3, 2.0)]

    schedule = schedule_round(0.0, attempts, per_round=4)

    assert schedule.kept == [1, 3, 0] and schedule.dropped == [2] and schedule.end == 3.0
    assert schedule.events[0] == (0.5, DROP, 2)


def test_a_round_where_every_task_fails_is_empty_and_ends_with_the_last_failure() -> None:
    schedule = schedule_round(1.0, [Attempt(c, 5.0, fails_at=float(c)) for c in range(3)], per_round=3)

    assert schedule.kept == [] and schedule.dropped == [0, 1, 2] and schedule.end == 3.0
    assert schedule_round(1.0, [Attempt(0, 5.0, fails_at=9.0)], per_round=1, deadline=2.0).end == 3.0


def test_equal_arrival_times_keep_the_lower_client_ids() -> None:
    schedule = schedule_round(0.0, [Attempt(c, 0.0) for c in (7, 2, 5)], per_round=2)

    assert schedule.kept == [2, 5] and schedule.late == [7]


@settings(max_examples=60, deadline=None, database=None)
@given(num_samples=st.integers(1, 70), batch_size=st.integers(1, 16), epochs=st.integers(1, 3),
       steps=st.integers(0, 40))
def test_samples_processed_counts_what_training_visits(num_samples, batch_size, epochs, steps) -> None:
    config = TrainConfig(epochs=epochs, steps=steps, batch_size=batch_size)
    batches = batch_indices(num_samples, config, torch.Generator().manual_seed(0), torch.device("cpu"))

    assert samples_processed(num_samples, config) == sum(len(batch) for batch in batches)
