"""FedAsync: staleness weights, the mixing rule x <- (1 - a s) x + a s y on hand-built arrivals, and options."""

import math

import pytest
import torch

from strategies.asynchronous.base import Arrival
from strategies.asynchronous.fedasync import FedAsync, FedAsyncConfig
from strategies.asynchronous.staleness import parse_staleness, staleness_limit
from strategies.base import Federation
from strategies.fedprox import ProximalTerm
from strategies.registry import strategy_config
from tests.strategies.async_driver import run_async

FED = Federation(num_clients=4, per_round=4, num_params=2, num_trainable=2, dtype=torch.float64)


def arrival(update: list[float], start: list[float], staleness: int = 0, dtype=torch.float64) -> Arrival:
    metrics = {"loss": 0.0, "steps": 1, "lr": 0.5}
    return Arrival(
        client_id=0, update=torch.tensor(update, dtype=dtype), num_samples=1, metrics=metrics, staleness=staleness,
        start_version=0, start_time=0.0, time=1.0, start_params=torch.tensor(start, dtype=dtype),
    )


@pytest.mark.parametrize(
    "spec, staleness, expected",
    [
        ("constant", 0, 1.0),
        ("constant", 7, 1.0),
        ("polynomial:a=0.5", 0, 1.0),
        ("polynomial:a=0.5", 3, 0.5),  # (1 + 3)^-0.5
        ("polynomial:a=1", 4, 0.2),  # 1 / 5
        ("hinge:a=10,b=4", 4, 1.0),  # tau <= b
        ("hinge:a=10,b=4", 5, 1 / 11),  # 1 / (10 * (5 - 4) + 1)
    ],
)
def test_staleness_weights(spec: str, staleness: int, expected: float) -> None:
    assert parse_staleness(spec)(staleness) == pytest.approx(expected, rel=1e-15)


def test_staleness_limit_maps_minus_one_to_no_limit() -> None:
    assert staleness_limit(-1) is None and staleness_limit(0) == 0 and staleness_limit(5) == 5


@pytest.mark.parametrize(
    "options, staleness, expected",
    [
        # y = [0, 0] + [4, 8]; alpha_t = 0.5: 0.5 * [2, -4] + 0.5 * [4, 8] = [3, 2]
        ({"alpha": 0.5, "staleness": "constant"}, 5, [3.0, 2.0]),
        # alpha_t = 0.5 * (1 + 3)^-0.5 = 0.25: 0.75 * [2, -4] + 0.25 * [4, 8] = [2.5, -1]
        ({"alpha": 0.5, "staleness": "polynomial:a=0.5"}, 3, [2.5, -1.0]),
        # alpha_t = 0.5 * 1 = 0.5 while tau <= b
        ({"alpha": 0.5, "staleness": "hinge:a=10,b=4"}, 4, [3.0, 2.0]),
        # alpha_t = 0.5 / 11: [2, -4] + (0.5 / 11) * ([4, 8] - [2, -4]) = [2 + 1/11, -4 + 6/11]
        ({"alpha": 0.5, "staleness": "hinge:a=10,b=4"}, 5, [2 + 1 / 11, -4 + 6 / 11]),
    ],
)
def test_mixing_weight_is_alpha_times_staleness_weight(options: dict, staleness: int, expected: list[float]) -> None:
    # Prepare
    strategy = FedAsyncConfig(**options).build(FED)
    global_params = torch.tensor([2.0, -4.0], dtype=torch.float64)
    # Execute
    new = strategy.on_arrival(arrival([4.0, 8.0], [0.0, 0.0], staleness), global_params)
    # Assert
    assert new.tolist() == pytest.approx(expected, rel=1e-15)


def test_alpha_one_without_staleness_returns_the_client_model_exactly() -> None:
    # Prepare: random float64 values, so x + (y - x) would round
    gen = torch.Generator().manual_seed(0)
    global_params, start, update = (torch.randn(50, generator=gen, dtype=torch.float64) for _ in range(3))
    strategy = FedAsyncConfig(alpha=1.0, staleness="constant").build(Federation(2, 2, 50, 50, torch.float64))
    item = Arrival(1, update, 3, {"loss": 0.0, "steps": 1, "lr": 0.1}, 0, 0, 0.0, 1.0, start)
    # Execute
    new = strategy.on_arrival(item, global_params)
    # Assert
    assert torch.equal(new, start + update)


def test_inputs_are_not_changed_and_the_dtype_is_kept() -> None:
    # Prepare
    strategy = FedAsyncConfig(alpha=0.5).build(FED)
    item = arrival([4.0, 8.0], [1.0, 1.0], 1, dtype=torch.float32)
    global_params = torch.tensor([2.0, -4.0])
    before = (global_params.clone(), item.update.clone(), item.start_params.clone())
    # Execute
    new = strategy.on_arrival(item, global_params)
    # Assert
    assert new.dtype == torch.float32 and new is not global_params
    assert all(torch.equal(a, b) for a, b in zip(before, (global_params, item.update, item.start_params)))


def test_build_sets_concurrency_staleness_limit_and_proximal_term() -> None:
    # Execute
    plain = FedAsyncConfig().build(FED)
    proximal = FedAsyncConfig(concurrency=0, rho=0.25, max_staleness=3).build(FED)
    # Assert: concurrency 10 is capped at the 4 clients, 0 means all of them
    assert isinstance(plain, FedAsync) and plain.concurrency == 4 and plain.max_staleness is None
    assert plain.client_algorithm is None
    assert proximal.concurrency == 4 and proximal.max_staleness == 3
    assert isinstance(proximal.client_algorithm, ProximalTerm) and proximal.client_algorithm.mu == 0.25


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": 0.0}, r"fedasync: alpha must be in \(0, 1\], got 0.0"),
        ({"alpha": 1.5}, r"fedasync: alpha must be in \(0, 1\], got 1.5"),
        ({"rho": -0.1}, r"fedasync: rho must be >= 0, got -0.1"),
        ({"staleness": "exponential"}, r"unknown staleness function 'exponential'; allowed: constant, hinge"),
        ({"staleness": "polynomial:a=0"}, r"staleness function polynomial: a must be > 0"),
        ({"max_staleness": -2}, r"max_staleness must be >= 0, or -1 for no limit, got -2"),
    ],
)
def test_bad_options_raise_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        FedAsyncConfig(**options)
    assert "\n" not in str(err.value)


def test_negative_concurrency_is_refused_at_build() -> None:
    with pytest.raises(ValueError, match="concurrency must be >= 0"):
        FedAsyncConfig(concurrency=-1).build(FED)


def test_trace_on_the_event_loop_with_polynomial_staleness() -> None:
    # Prepare: centers 0 and 10, 1 and 3 seconds per step, one GD step with lr 0.5 (y = 0.5 x + 0.5 c), x0 = 8
    strategy = FedAsyncConfig(concurrency=2, alpha=0.5).build(Federation(2, 2, 1, 1, torch.float64))
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 3.0], versions=5, x0=8.0)
    # Assert: t=1,2,3 client 0 (tau 0, alpha_t 0.5): y = 4, 3, 2.25 gives x = 6, 4.5, 3.375, and client 0 restarts
    # from 3.375 at once; client 1 arrives at t=3 too (tau 3, alpha_t 0.5 / 2): y = 0.5 * 8 + 5 = 9,
    # x = 0.75 * 3.375 + 0.25 * 9 = 4.78125; at t=4 client 0 (tau 1, alpha_t 0.5 / sqrt 2) brings y = 1.6875:
    # x = 4.78125 + alpha_t (1.6875 - 4.78125) = 4.78125 - 0.7734375 sqrt 2
    last = 4.78125 - 0.7734375 * math.sqrt(2)
    assert trace.arrivals[:4] == [(1.0, 0, 0, 6.0), (2.0, 0, 0, 4.5), (3.0, 0, 0, 3.375), (3.0, 1, 3, 4.78125)]
    assert trace.arrivals[4][:3] == (4.0, 0, 1) and trace.arrivals[4][3] == pytest.approx(last, rel=1e-14)
    assert trace.published == [(t, x) for t, _, _, x in trace.arrivals]  # every arrival publishes
    assert trace.final == pytest.approx(last, rel=1e-14)


def test_trace_proximal_term_reaches_the_client() -> None:
    # Prepare: one client, center 0, x0 = 8, two steps with lr 0.5 and rho 1; alpha 1 returns the client model
    config = FedAsyncConfig(concurrency=1, alpha=1.0, staleness="constant", rho=1.0)
    strategy = config.build(Federation(1, 1, 1, 1, torch.float64))
    # Execute
    trace = run_async(strategy, centers=[0.0], seconds_per_step=[1.0], versions=1, steps=2, x0=8.0)
    # Assert: step 1: x = 8 - 0.5 * 8 = 4; step 2: gradient 4 + 1 * (4 - 8) = 0, so x stays 4 (without rho: 2)
    assert trace.arrivals == [(2.0, 0, 0, 4.0)]


def test_registry_builds_the_config() -> None:
    # Passes once "fedasync" is registered to FedAsyncConfig.
    config = strategy_config("fedasync", {"alpha": 0.5, "staleness": "hinge:a=10,b=4"})
    assert isinstance(config, FedAsyncConfig) and config.alpha == 0.5 and config.staleness == "hinge:a=10,b=4"
