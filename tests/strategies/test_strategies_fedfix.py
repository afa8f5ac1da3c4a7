"""FedFix and weighted async FedAvg (Fraboni et al., 2023): ticks, waiting clients, ceil(tau / dt), duration weights."""

import numpy as np
import pytest
import torch

from strategies.asynchronous.base import Arrival, Start
from strategies.asynchronous.fedfix import AsyncFedAvg, AsyncFedAvgConfig, FedFix, FedFixConfig
from strategies.base import Federation, Reply
from strategies.fedavg import FedAvgConfig
from strategies.registry import strategy_config
from tests.strategies.async_driver import run_async

FED = Federation(num_clients=2, per_round=2, num_params=1, num_trainable=1, dtype=torch.float64, train_sizes=(1, 3))
RNG = np.random.default_rng(0)


def arrival(client: int, update: list[float], start_time: float, time: float, samples: int = 1,
            dtype: torch.dtype = torch.float64) -> Arrival:
    tensor = torch.tensor(update, dtype=dtype)
    return Arrival(client, tensor, samples, {"loss": 0.0, "steps": 1.0, "lr": 0.5}, 0, 0, start_time, time,
                   torch.zeros_like(tensor))


def test_ticks_on_multiples_of_the_interval_and_an_empty_tick_publishes_nothing() -> None:
    # Prepare
    strategy = FedFixConfig(interval=0.2).build(FED)
    x = torch.tensor([1.0], dtype=torch.float64)
    # Execute: one arrival before the first tick, none before the second
    on_arrival = strategy.on_arrival(arrival(0, [3.0], 0.0, 0.1), x)
    times = [strategy.next_timer()]
    results = [strategy.on_timer(times[-1], x)]
    for _ in range(3):
        times.append(strategy.next_timer())
        results.append(strategy.on_timer(times[-1], x))
    # Assert: k * interval (not a running sum); x + d_0 * 3 = 1 + (1 * 1/4) * 3 published at the first tick only
    assert times == [0.2, 2 * 0.2, 3 * 0.2, 4 * 0.2]
    assert on_arrival is None and results[0].tolist() == [1.75] and results[1:] == [None, None, None]


def test_weight_is_ceil_of_duration_over_interval_times_the_share_of_all_samples() -> None:
    # Prepare: dt = 2, train sizes 1 and 3 (p = 1/4, 3/4); client 0 started at 0 and arrives at 3 (ceil 1.5 = 2);
    # client 1 started at the tick at 2
    strategy = FedFixConfig(interval=2.0, server_lr=2.0).build(FED)
    x = torch.tensor([1.0], dtype=torch.float64)
    strategy.on_timer(2.0, x)
    # Execute
    strategy.on_arrival(arrival(0, [4.0], 0.0, 3.0, samples=1), x)
    strategy.on_arrival(arrival(1, [1.0], 2.0, 3.0, samples=3), x)
    new = strategy.on_timer(4.0, x)
    # Assert: d = (2 * 1/4, 1 * 3/4), not divided by their sum: 1 + 2 * (1/2 * 4 + 3/4 * 1) = 6.5
    assert new.item() == pytest.approx(6.5, rel=1e-15)


@pytest.mark.parametrize(
    "start, time, ticks_before, expected",
    [
        (0.0, 4.0, 1, 2.0),  # tau = 2 dt exactly, arriving at the tick: ceil(2) = 2
        (0.0, 5.0, 2, 3.0),  # ceil(2.5) = 3
        (2.0, 2.0, 1, 1.0),  # tau = 0 counts as 1
    ],
)
def test_equal_weights_ceil_cases(start: float, time: float, ticks_before: int, expected: float) -> None:
    # Prepare: the client's update 1 against a client that started at the latest tick with update 0
    strategy = FedFixConfig(interval=2.0, weights="equal").build(FED)
    x = torch.zeros(1, dtype=torch.float64)
    for k in range(1, ticks_before + 1):
        strategy.on_timer(2.0 * k, x)
    strategy.on_arrival(arrival(0, [1.0], start, time), x)
    strategy.on_arrival(arrival(1, [0.0], 2.0 * ticks_before, time), x)
    # Execute
    new = strategy.on_timer(2.0 * (ticks_before + 1), x)
    # Assert: p = 1/2 each, so x = 0 + ceil * 1/2 * 1 + 1 * 1/2 * 0
    assert new.item() == pytest.approx(expected / 2.0, rel=1e-15)


def test_one_tick_of_every_client_equals_fedavg_bit_for_bit() -> None:
    # Prepare: float32 model, 3 clients arriving in (0, dt] in the order 2, 0, 1, with sample counts 7, 5, 2
    gen = torch.Generator().manual_seed(3)
    global_params, *updates = (torch.randn(20, generator=gen) for _ in range(4))
    samples, order = [5, 2, 7], [2, 0, 1]
    fed = Federation(3, 3, 20, 20, train_sizes=tuple(samples))
    strategy = FedFixConfig(interval=10.0).build(fed)
    # Execute
    for when, client in enumerate(order, start=1):
        strategy.on_arrival(Arrival(client, updates[client], samples[client], {"loss": 0.0, "steps": 1.0, "lr": 0.1},
                                    0, 0, 0.0, float(when), global_params), global_params)
    fedfix = strategy.on_timer(10.0, global_params)
    replies = [Reply(c, updates[c], samples[c], {"loss": 0.0, "steps": 1.0, "lr": 0.1}) for c in order]
    fedavg, _ = FedAvgConfig().build(fed).aggregate(0, global_params, replies)
    # Assert
    assert fedfix.dtype == torch.float32 and torch.equal(fedfix, fedavg)


def test_waiting_clients_restart_only_at_the_tick() -> None:
    # Prepare: 3 clients, all started at 0; client 0 arrives at 1, client 1 arrives at 2 (the tick time)
    strategy = FedFixConfig(interval=2.0).build(Federation(3, 3, 1, 1, torch.float64, train_sizes=(1, 1, 1)))
    x = torch.zeros(1, dtype=torch.float64)
    at_zero = strategy.select(0.0, np.array([0, 1, 2]), 3, RNG)
    strategy.on_arrival(arrival(0, [1.0], 0.0, 1.0), x)
    after_arrival = strategy.select(1.0, np.array([0]), 1, RNG)
    strategy.on_arrival(arrival(1, [1.0], 0.0, 2.0), x)
    before_tick = strategy.select(2.0, np.array([0, 1]), 2, RNG)  # arrivals come before timers at equal times
    # Execute
    strategy.on_timer(2.0, x)
    at_tick = strategy.select(2.0, np.array([0, 1]), 2, RNG)
    strategy.on_arrival(arrival(0, [1.0], 2.0, 2.0), x)  # an instantaneous task arrives at the tick time
    instant = strategy.select(2.0, np.array([0]), 1, RNG)
    # Assert
    assert sorted(s.client_id for s in at_zero) == [0, 1, 2]
    assert after_arrival == [] and before_tick == [] and instant == []
    assert sorted(at_tick, key=lambda s: s.client_id) == [Start(0), Start(1)]


def test_concurrency_limits_the_starts_and_zero_means_every_client() -> None:
    # Execute
    every, two = FedFixConfig().build(Federation(4, 4, 1, 1)), FedFixConfig(concurrency=2).build(Federation(4, 4, 1, 1))
    starts = two.select(0.0, np.arange(4), 2, RNG)
    # Assert
    assert every.concurrency == 4 and two.concurrency == 2 and every.max_staleness is None
    assert len({s.client_id for s in starts}) == 2


def test_async_fedavg_without_correction_adds_every_update() -> None:
    # Prepare
    strategy = AsyncFedAvgConfig(correction=False, server_lr=0.5).build(FED)
    # Execute
    new = strategy.on_arrival(arrival(1, [4.0], 0.0, 3.0), torch.tensor([1.0], dtype=torch.float64))
    # Assert: 1 + 0.5 * 1 * 4
    assert new.tolist() == [3.0]


def test_async_fedavg_weights_follow_mean_observed_durations() -> None:
    # Prepare: M = 2, p_i = 1/2; client 0's tasks take 1 s then 3 s, client 1's take 3 s
    strategy = AsyncFedAvgConfig().build(FED)
    x = torch.zeros(1, dtype=torch.float64)
    # Execute
    timings = [(0, 0.0, 1.0), (1, 0.0, 3.0), (0, 1.0, 2.0), (0, 2.0, 5.0)]
    weights = [strategy.on_arrival(arrival(c, [1.0], start, end), x).item() for c, start, end in timings]
    # Assert: unseen client 1 taken at client 0's rate: d = 1; then (1/1 + 1/3) * tau_i / 2: 3 * 4/6 = 2, 1 * 4/6;
    # client 0's mean duration becomes (1 + 1 + 3) / 3 = 5/3: d = 5/3 * (3/5 + 1/3) / 2 = 7/9
    assert weights == pytest.approx([1.0, 2.0, 2 / 3, 7 / 9], rel=1e-15)


@pytest.mark.parametrize("config", [FedFixConfig(interval=1.0), AsyncFedAvgConfig()])
def test_inputs_are_not_changed_and_the_dtype_is_kept(config) -> None:
    # Prepare
    strategy = config.build(Federation(2, 2, 2, 2, train_sizes=(1, 1)))
    item = arrival(0, [4.0, 8.0], 0.0, 0.5, dtype=torch.float32)
    x = torch.tensor([2.0, -4.0])
    before = (x.clone(), item.update.clone(), item.start_params.clone())
    # Execute
    new = strategy.on_arrival(item, x)
    if new is None:
        new = strategy.on_timer(1.0, x)
    # Assert
    assert new.dtype == torch.float32 and new is not x
    assert all(torch.equal(a, b) for a, b in zip(before, (x, item.update, item.start_params)))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FedFixConfig(interval=0.0), r"fedfix: interval must be a positive number of seconds, got 0.0"),
        (lambda: FedFixConfig(interval=float("inf")), r"fedfix: interval must be a positive number of seconds"),
        (lambda: FedFixConfig(server_lr=0.0), r"fedfix: server_lr must be > 0, got 0.0"),
        (lambda: FedFixConfig(weights="uniform"), r"fedfix: weights must be one of samples, equal, got 'uniform'"),
        (lambda: AsyncFedAvgConfig(server_lr=-1.0), r"async_fedavg: server_lr must be > 0, got -1.0"),
        (lambda: FedFixConfig(concurrency=-1).build(FED), r"concurrency must be >= 0"),
        (lambda: AsyncFedAvgConfig(concurrency=-1).build(FED), r"concurrency must be >= 0"),
    ],
)
def test_bad_options_raise_one_line_errors(make, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_fedfix_trace_on_the_event_loop() -> None:
    # Prepare: centers 0 and 10, 1 and 3 s per step, one GD step with lr 0.5 (update = 0.5 (c - x)), x0 = 2, dt = 2,
    # p = 1/2 each
    strategy = FedFixConfig(interval=2.0, weights="equal").build(FED)
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 3.0], versions=4, x0=2.0)
    # Assert, by hand (d_0 = 1 * 1/2 each tick; client 1 takes ceil(3 / 2) = 2 ticks: d_1 = 2 * 1/2 = 1):
    # t=1 client 0 arrives (update -1) and waits; t=2 tick: x = 2 + 1/2 * -1 = 1.5; client 0 restarts from 1.5.
    # t=3 client 0 (update -0.75) and client 1 (update 0.5 * (10 - 2) = 4, from x0);
    # t=4 tick: x = 1.5 + 1/2 * -0.75 + 1 * 4 = 5.125; both restart from 5.125 (updates -2.5625 and 2.4375).
    # t=5 client 0 arrives; t=6 tick: x = 5.125 - 2.5625 / 2 = 3.84375; client 0 restarts (update -1.921875).
    # t=7 both arrive; t=8 tick: x = 3.84375 - 1.921875 / 2 + 2.4375 = 5.3203125.
    assert trace.published == [(2.0, 1.5), (4.0, 5.125), (6.0, 3.84375), (8.0, 5.3203125)]
    assert trace.arrivals == [(1.0, 0, 0, 2.0), (3.0, 0, 0, 1.5), (3.0, 1, 1, 1.5), (5.0, 0, 0, 5.125),
                              (7.0, 0, 0, 3.84375), (7.0, 1, 1, 3.84375)]
    assert [(t, c) for t, c, _ in trace.starts] == [(0.0, 0), (0.0, 1), (2.0, 0), (4.0, 0), (4.0, 1), (6.0, 0),
                                                    (8.0, 0), (8.0, 1)]


def test_a_fast_client_arriving_alone_weighs_its_share_not_one() -> None:
    # Prepare: the case: tasks of 1 and 2 s, dt = 1, so client 0 arrives alone at every odd tick; train sizes
    # 1 and 3 (p = 1/4, 3/4: d_0 = 1/4, d_1 = ceil(2 / 1) * 3/4 = 3/2); centers 0 and 10, one GD step with lr 0.5
    # (update = 0.5 (c - x)), x0 = 2
    strategy = FedFixConfig(interval=1.0).build(FED)
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 2.0], versions=4, x0=2.0,
                      samples=[1, 3])
    # Assert, by hand; each arrival is at a tick's time and joins that tick (arrivals come before timers):
    # t=1 client 0 (update -1): x = 2 - 1/4 = 1.75 (dividing by the tick's weights gave 2 - 1 = 1: weight 1);
    # t=2 client 0 from 1.75 (-0.875) and client 1 from 2 (4): x = 1.75 - 0.875 / 4 + 3/2 * 4 = 7.53125;
    # t=3 client 0 from 7.53125 (-3.765625): x = 7.53125 - 3.765625 / 4 = 6.58984375;
    # t=4 client 0 from 6.58984375 (-3.294921875), client 1 from 7.53125 (1.234375):
    #     x = 6.58984375 - 3.294921875 / 4 + 3/2 * 1.234375 = 7.61767578125
    assert trace.published == [(1.0, 1.75), (2.0, 7.53125), (3.0, 6.58984375), (4.0, 7.61767578125)]
    assert [a[:3] for a in trace.arrivals] == [(1.0, 0, 0), (2.0, 0, 0), (2.0, 1, 1), (3.0, 0, 0), (4.0, 0, 0),
                                               (4.0, 1, 1)]


@pytest.mark.parametrize("weights, sizes, optimum", [("equal", (1, 1), 5.0), ("samples", (1, 3), 7.5)])
def test_the_fixed_point_is_the_p_weighted_optimum_up_to_the_step_size(weights: str, sizes: tuple[int, int],
                                                                       optimum: float) -> None:
    # Prepare: as above with lr eta = 0.1 over 400 ticks (200 cycles of two ticks)
    eta, (p0, p1) = 0.1, (sizes[0] / sum(sizes), sizes[1] / sum(sizes))
    strategy = FedFixConfig(interval=1.0, weights=weights).build(Federation(2, 2, 1, 1, torch.float64,
                                                                           train_sizes=sizes))
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 2.0], versions=400, lr=eta, x0=2.0,
                      samples=list(sizes))
    # Assert: over a cycle from x (both start): x' = x + b (c0 - x), x'' = x' + b (c0 - x') + e (c1 - x), with
    # b = eta p0 and e = 2 eta p1 (d_1 = 2 p1); its fixed point is [b (2 - b) c0 + e c1] / [b (2 - b) + e], which
    # tends to p0 c0 + p1 c1 as eta -> 0 (b (2 - b) -> 2 eta p0). Dividing by each tick's weights gives client 0
    # weight 1 at odd ticks: 4/3 : 2/3 (equal) and 8/7 : 6/7 (samples) per cycle, fixed points 3.39 and 4.32.
    b, e = eta * p0, 2 * eta * p1
    fixed_point = e * 10.0 / (b * (2 - b) + e)
    assert trace.final == pytest.approx(fixed_point, rel=1e-12)
    assert abs(fixed_point - optimum) < eta  # 5.063 (equal) and 7.524 (samples)


def test_model_buffers_take_the_weighted_mean_of_their_deltas() -> None:
    # Prepare: one trainable entry and one buffer; p = 1/4, 3/4; only client 0 arrives, then both
    fed = Federation(2, 2, num_params=2, num_trainable=1, dtype=torch.float64, train_sizes=(1, 3))
    strategy = FedFixConfig(interval=1.0, server_lr=2.0).build(fed)
    x = torch.tensor([1.0, 1.0], dtype=torch.float64)
    # Execute
    strategy.on_arrival(arrival(0, [4.0, 4.0], 0.0, 1.0), x)
    alone = strategy.on_timer(1.0, x)
    strategy.on_arrival(arrival(0, [4.0, 4.0], 1.0, 2.0), x)
    strategy.on_arrival(arrival(1, [4.0, 0.0], 0.0, 2.0), x)
    both = strategy.on_timer(2.0, x)
    # Assert: trainable: 1 + 2 * 1/4 * 4 = 3, then 1 + 2 * (1/4 * 4 + 2 * 3/4 * 4) = 15; the buffer takes the mean of
    # its deltas with weights 1/4 and 3/2, without server_lr: 1 + 4 = 5, then 1 + (1/4 * 4) / (7/4) = 1 + 4/7
    assert alone.tolist() == [3.0, 5.0]
    assert both.tolist() == pytest.approx([15.0, 1.0 + 4.0 / 7.0], rel=1e-15)


def test_sample_weights_without_the_train_sizes_are_refused() -> None:
    # Prepare: a federation that does not say its clients' sizes (a probe, such as the registry's, builds one)
    strategy = FedFixConfig().build(Federation(2, 2, 1, 1, torch.float64))
    # Execute / Assert
    with pytest.raises(ValueError, match=r'fedfix: weights "samples" needs every client\'s train size'):
        strategy.on_arrival(arrival(0, [1.0], 0.0, 0.5), torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"fedfix: 1 train sizes for 2 clients"):
        FedFixConfig().build(Federation(2, 2, 1, 1, train_sizes=(4,)))


def test_registry_builds_the_configs() -> None:
    # Passes once "fedfix" and "async_fedavg" are registered to FedFixConfig and AsyncFedAvgConfig.
    fedfix = strategy_config("fedfix", {"interval": 2, "weights": "equal"})
    async_fedavg = strategy_config("async_fedavg", {"correction": False})
    assert isinstance(fedfix, FedFixConfig) and fedfix.interval == 2.0 and fedfix.weights == "equal"
    assert isinstance(async_fedavg, AsyncFedAvgConfig) and async_fedavg.correction is False
    assert isinstance(fedfix.build(FED), FedFix) and isinstance(async_fedavg.build(FED), AsyncFedAvg)


def test_trace_of_async_fedavg_with_and_without_the_correction() -> None:
    # Prepare: centers 0 and 10, 1 and 3 seconds per step, one GD step with lr 0.5: update = 0.5 (c - x_start), x0 4
    def trace(correction: bool) -> list[tuple[float, int, int, float]]:
        strategy = AsyncFedAvgConfig(correction=correction).build(FED)
        return run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 3.0], versions=4, x0=4.0).arrivals

    # Execute / Assert: identical weights d = 1: t=1, 2, 3 client 0 sends -2, -1, -0.5 (x = 2, 1, 0.5); client 1,
    # started from 4, sends 3 at t=3 with staleness 3: x = 3.5
    assert trace(False) == [(1.0, 0, 0, 2.0), (2.0, 0, 0, 1.0), (3.0, 0, 0, 0.5), (3.0, 1, 3, 3.5)]
    # The correction d_i = tau_i * mean over the clients seen of 1/tau_j: 1 while only client 0 (tau 1) is seen;
    # client 1 (tau 3) gets 3 * (1/1 + 1/3) / 2 = 2: x = 0.5 + 2 * 3 = 6.5
    assert trace(True) == [(1.0, 0, 0, 2.0), (2.0, 0, 0, 1.0), (3.0, 0, 0, 0.5), (3.0, 1, 3, 6.5)]
