"""Simultaneous arrivals on the event loop: handled one at a time by client id, each client restarting at once on the
version its arrival left (the papers' schedulers, e.g. Fraboni et al. 2023, clients_schedule.py), with lazy training
still batched; tasks that take no time restart together once their instant is handled, so none starves the others."""

import pytest
import torch

from strategies.asynchronous.fedasync import FedAsyncConfig
from strategies.asynchronous.fedbuff import FedBuffConfig
from strategies.base import Federation
from tests.strategies.async_driver import run_async

TWO = Federation(num_clients=2, per_round=2, num_params=1, num_trainable=1, dtype=torch.float64)
FEDASYNC = FedAsyncConfig(concurrency=2, alpha=0.5, staleness="constant")  # x <- x / 2 + y / 2


def test_a_client_restarts_on_the_version_it_published_before_the_next_arrival_of_its_instant() -> None:
    # Prepare: FedAsync, both tasks take 1 s, centers 0 and 10, one GD step with lr 0.5: y = (s + c) / 2, x0 = 2
    # Execute
    trace = run_async(FEDASYNC.build(TWO), centers=[0.0, 10.0], seconds_per_step=[1.0, 1.0], versions=4, x0=2.0)
    # Assert, by hand: t=1 client 0 (y = 1): x = 1.5 (v1), and client 0 restarts from 1.5 at once; client 1
    # (y = 6, staleness 1): x = 3.75 (v2), client 1 restarts from 3.75. t=2 client 0 (from v1, staleness 1,
    # y = 0.75): x = 2.25; client 1 (y = 6.875): x = 4.5625. (Restarting both from 3.75 gave 2.8125 and 4.84375.)
    assert trace.arrivals == [(1.0, 0, 0, 1.5), (1.0, 1, 1, 3.75), (2.0, 0, 1, 2.25), (2.0, 1, 1, 4.5625)]
    assert trace.downloads == [(0, 2.0), (1, 2.0), (0, 1.5), (1, 3.75), (0, 2.25), (1, 4.5625)]
    # training stays lazy and batched: client 0's arrival at t=2 trains both restarted tasks together
    assert trace.batches == [[0, 1], [0, 1]]


def test_the_two_rules_converge_to_different_points() -> None:
    # Execute: 200 versions, ending on client 1's arrival
    trace = run_async(FEDASYNC.build(TWO), centers=[0.0, 10.0], seconds_per_step=[1.0, 1.0], versions=200, x0=2.0)
    # Assert: with a, b the values after client 0's and client 1's arrivals of one instant, client 0 trains from
    # its own a and client 1 from b: a' = b / 2 + a / 4 and b' = a' / 2 + (b + 10) / 4, so a = 2b / 3 and b = 6.
    # Both restarting from b would give a' = 3b / 4 and b = 20 / 3.
    assert trace.final == pytest.approx(6.0, rel=1e-12)


def test_a_client_whose_arrival_publishes_nothing_restarts_on_the_current_version() -> None:
    # Prepare: FedBuff with K = 2, constant staleness, server lr 1: x <- x + mean of the two updates 0.5 (c - s)
    strategy = FedBuffConfig(concurrency=2, buffer_size=2, staleness="constant").build(TWO)
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 1.0], versions=2, x0=2.0)
    # Assert: t=1 client 0 (update -1) fills half the buffer and restarts from 2 at once; client 1 (update 4):
    # x = 2 + (-1 + 4) / 2 = 3.5, client 1 restarts from 3.5. t=2 client 0 (from 2, staleness 1, update -1)
    # restarts from 3.5; client 1 (update 3.25): x = 3.5 + (-1 + 3.25) / 2 = 4.625
    assert trace.published == [(1.0, 3.5), (2.0, 4.625)]
    assert trace.arrivals == [(1.0, 0, 0, 2.0), (1.0, 1, 0, 3.5), (2.0, 0, 1, 3.5), (2.0, 1, 0, 4.625)]
    assert trace.downloads == [(0, 2.0), (1, 2.0), (0, 2.0), (1, 3.5), (0, 3.5), (1, 4.625)]


def test_tasks_that_take_no_time_restart_together_and_starve_nobody() -> None:
    # Prepare: as the first test, with instantaneous tasks (no device profiles): every event is at time 0
    # Execute
    trace = run_async(FEDASYNC.build(TWO), centers=[0.0, 10.0], seconds_per_step=[0.0, 0.0], versions=6, x0=2.0)
    # Assert: each instant's arrivals, by client id, then both restart from the newest version: x = 1.5, 3.75;
    # then from 3.75: client 0 (y = 1.875) x = 2.8125, client 1 (y = 6.875) x = 4.84375; then from 4.84375:
    # client 0 (y = 2.421875) x = 3.6328125, client 1 (y = 7.421875) x = 5.52734375. Restarting client 0 at once
    # would put its next arrival (time 0, id 0) before client 1's, again and again.
    assert trace.arrivals == [(0.0, 0, 0, 1.5), (0.0, 1, 1, 3.75), (0.0, 0, 0, 2.8125), (0.0, 1, 1, 4.84375),
                              (0.0, 0, 0, 3.6328125), (0.0, 1, 1, 5.52734375)]
    assert trace.batches == [[0, 1], [0, 1], [0, 1]]
