"""AFA-CD and AFA-CS (Yang et al., 2022): anarchic starts, normalisation by steps, the buffer and AFA-CS's memory."""

import numpy as np
import pytest
import torch

from strategies.asynchronous.anarchic import AFACD, AFACDConfig, AFACS, AFACSConfig
from strategies.asynchronous.base import Arrival
from strategies.base import Federation
from strategies.registry import strategy_config
from tests.strategies.async_driver import run_async

FED = Federation(num_clients=4, per_round=4, num_params=1, num_trainable=1, dtype=torch.float64)


def arrival(client: int, update: list[float], steps: float, dtype: torch.dtype = torch.float64) -> Arrival:
    tensor = torch.tensor(update, dtype=dtype)
    metrics = {"loss": 0.0, "steps": steps, "lr": 0.5}
    return Arrival(client, tensor, 1, metrics, 0, 0, 0.0, 1.0, torch.zeros_like(tensor))


def test_update_is_normalised_by_the_steps_run() -> None:
    # Prepare: m = 1, eta = 0.5
    strategy = AFACDConfig(buffer_size=1, server_lr=0.5).build(FED)
    # Execute
    new = strategy.on_arrival(arrival(0, [6.0], steps=3.0), torch.tensor([1.0], dtype=torch.float64))
    # Assert: 1 + 0.5 * 6 / 3
    assert new.tolist() == [2.0]


def test_afa_cd_publishes_every_m_arrivals() -> None:
    # Prepare: m = 3
    strategy = AFACDConfig(buffer_size=3).build(FED)
    x = torch.tensor([1.0], dtype=torch.float64)
    # Execute: u = 2, 1, 3 (the same client twice counts twice), then a fresh buffer
    results = [strategy.on_arrival(arrival(c, [u * k], steps=k), x) for c, u, k in [(0, 2, 1), (1, 1, 2), (0, 3, 3)]]
    next_one = strategy.on_arrival(arrival(2, [5.0], steps=1), x)
    # Assert: 1 + (2 + 1 + 3) / 3
    assert results[:2] == [None, None] and results[2].tolist() == [3.0] and next_one is None


def test_afa_cs_keeps_each_clients_latest_update_and_counts_the_rest_as_zero() -> None:
    # Prepare: M = 4 clients, m = 2
    strategy = AFACSConfig(buffer_size=2).build(FED)
    x = torch.tensor([1.0], dtype=torch.float64)
    # Execute
    first = [strategy.on_arrival(arrival(0, [8.0], 2.0), x), strategy.on_arrival(arrival(1, [2.0], 1.0), x)]
    second = [strategy.on_arrival(arrival(0, [3.0], 3.0), x), strategy.on_arrival(arrival(0, [-6.0], 2.0), x)]
    # Assert: u_0 = 4, u_1 = 2: 1 + (4 + 2 + 0 + 0) / 4; then u_0 = 1 and u_0 = -3 replace 4: 1 + (-3 + 2) / 4
    assert first[0] is None and first[1].tolist() == [2.5]
    assert second[0] is None and second[1].tolist() == [0.75]
    assert sorted(strategy.latest) == [0, 1] and strategy.latest[0].tolist() == [-3.0]


def test_drawn_steps_lie_in_the_range_and_draws_are_reproducible() -> None:
    # Prepare
    strategy = AFACDConfig(steps_min=2, steps_max=4).build(Federation(50, 50, 1, 1))
    # Execute
    starts = strategy.select(0.0, np.arange(50), 50, np.random.default_rng(7))
    again = strategy.select(0.0, np.arange(50), 50, np.random.default_rng(7))
    # Assert: every idle client participates at once, K in {2, 3, 4}, each value drawn
    assert sorted(s.client_id for s in starts) == list(range(50))
    assert {s.config["steps"] for s in starts} == {2, 3, 4} and all(s.delay == 0.0 for s in starts)
    assert starts == again


def test_idle_waits_are_exponential_with_the_given_mean() -> None:
    # Prepare
    strategy = AFACSConfig(idle_mean=5.0, steps_min=3, steps_max=3).build(Federation(2000, 2000, 1, 1))
    # Execute
    starts = strategy.select(0.0, np.arange(2000), 2000, np.random.default_rng(1))
    delays = np.array([s.delay for s in starts])
    # Assert: positive, mean 5 within 4 standard errors (5 / sqrt 2000 = 0.11)
    assert (delays > 0).all() and abs(delays.mean() - 5.0) < 0.45
    assert all(s.config == {"steps": 3} for s in starts)


def test_select_starts_at_most_the_free_slots() -> None:
    # Prepare
    strategy = AFACDConfig(concurrency=3).build(FED)
    # Execute
    starts = strategy.select(0.0, np.arange(4), 3, np.random.default_rng(0))
    # Assert
    assert strategy.concurrency == 3 and len({s.client_id for s in starts}) == 3


@pytest.mark.parametrize("config", [AFACDConfig(buffer_size=1), AFACSConfig(buffer_size=1)])
def test_inputs_are_not_changed_and_the_dtype_is_kept(config) -> None:
    # Prepare
    strategy = config.build(Federation(4, 4, 2, 2))
    item = arrival(0, [4.0, 8.0], 2.0, dtype=torch.float32)
    x = torch.tensor([2.0, -4.0])
    before = (x.clone(), item.update.clone(), item.start_params.clone())
    # Execute
    new = strategy.on_arrival(item, x)
    # Assert
    assert new.dtype == torch.float32 and new is not x and strategy.max_staleness is None
    assert all(torch.equal(a, b) for a, b in zip(before, (x, item.update, item.start_params)))


@pytest.mark.parametrize("config_cls, name", [(AFACDConfig, "afa_cd"), (AFACSConfig, "afa_cs")])
@pytest.mark.parametrize(
    "options, message",
    [
        ({"buffer_size": 0}, r"buffer_size must be >= 1, got 0"),
        ({"server_lr": 0.0}, r"server_lr must be > 0, got 0.0"),
        ({"steps_min": 0}, r"need 1 <= steps_min <= steps_max, got 0 and 10"),
        ({"steps_min": 5, "steps_max": 4}, r"need 1 <= steps_min <= steps_max, got 5 and 4"),
        ({"idle_mean": -1.0}, r"idle_mean must be a number of seconds >= 0, got -1.0"),
    ],
)
def test_bad_options_raise_one_line_errors(config_cls, name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: {message}") as err:
        config_cls(**options)
    assert "\n" not in str(err.value)


def test_negative_concurrency_is_refused_at_build() -> None:
    with pytest.raises(ValueError, match="concurrency must be >= 0"):
        AFACSConfig(concurrency=-1).build(FED)


def test_afa_cd_trace_on_the_event_loop() -> None:
    # Prepare: centers 0 and 10, 1 and 3 s per step, K = 2 GD steps with lr 0.5 (each halves x - c, so
    # update = 0.75 (c - x) and u = update / 2 = 0.375 (c - x)); m = 2, eta = 1, no idle waits, x0 = 8
    strategy = AFACDConfig(buffer_size=2, steps_min=2, steps_max=2).build(Federation(2, 2, 1, 1, torch.float64))
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 3.0], versions=3, x0=8.0)
    # Assert, by hand: client 0 takes 2 s, client 1 takes 6 s.
    # t=2, t=4: client 0 from 8 (u = -3) twice: x = 8 - 3 = 5; client 0 restarts from 5 (u = -15/8).
    # t=6: client 0 (staleness 0) fills half the buffer and restarts from 5 at once; client 1 (from 8, u = 0.75,
    #      staleness 1) completes the buffer: x = 5 + (-15/8 + 3/4) / 2 = 71/16, and restarts from there.
    # t=8: client 0 (from 5, staleness 1, u = -15/8) restarts from 71/16 (u = -213/128).
    # t=10: client 0: x = 71/16 + (-15/8 - 213/128) / 2 = 683/256.
    assert trace.published == [(4.0, 5.0), (6.0, 71 / 16), (10.0, 683 / 256)]
    assert trace.arrivals == [(2.0, 0, 0, 8.0), (4.0, 0, 0, 5.0), (6.0, 0, 0, 5.0), (6.0, 1, 1, 71 / 16),
                              (8.0, 0, 1, 71 / 16), (10.0, 0, 0, 683 / 256)]
    assert all(config == {"steps": 2} for _, _, config in trace.starts)


def test_registry_builds_the_configs() -> None:
    # Passes once "afa_cd" and "afa_cs" are registered to AFACDConfig and AFACSConfig.
    cd = strategy_config("afa_cd", {"buffer_size": 3, "idle_mean": 2})
    cs = strategy_config("afa_cs", {"steps_min": 2, "steps_max": 5})
    assert isinstance(cd, AFACDConfig) and cd.buffer_size == 3 and cd.idle_mean == 2.0
    assert isinstance(cs, AFACSConfig) and (cs.steps_min, cs.steps_max) == (2, 5)
    assert isinstance(cd.build(FED), AFACD) and isinstance(cs.build(FED), AFACS)


def test_trace_of_afa_cs_keeps_every_clients_latest_normalised_update() -> None:
    # Prepare: two clients (M = 2), one step each (u = update / 1), a server step after every arrival (m = 1)
    federation = Federation(num_clients=2, per_round=2, num_params=1, num_trainable=1, dtype=torch.float64)
    strategy = AFACSConfig(buffer_size=1, steps_min=1, steps_max=1, idle_mean=0.0).build(federation)
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 3.0], versions=4, x0=4.0)
    # Assert: x <- x + (u_0 + u_1) / 2 with the stored u's: t=1 u_0 = -2 (x 3); t=2 u_0 = -1.5 (x 2.25); t=3 u_0 =
    # -1.125 (x 1.6875), then client 1's first update, from 4: u_1 = 3, so x = 1.6875 + (-1.125 + 3) / 2 = 2.625
    assert trace.arrivals == [(1.0, 0, 0, 3.0), (2.0, 0, 0, 2.25), (3.0, 0, 0, 1.6875), (3.0, 1, 3, 2.625)]
