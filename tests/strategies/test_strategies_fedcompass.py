"""FedCompass: speed EMA, joining and creating arrival groups, group/timer/late aggregation, and traces on the loop."""

import numpy as np
import pytest
import torch

from strategies.asynchronous.base import Arrival, AsyncStrategy, Start
from strategies.asynchronous.fedcompass import FedCompass, FedCompassConfig, Group
from strategies.base import Federation
from strategies.registry import strategy_config
from tests.strategies.async_driver import run_async

RNG = np.random.default_rng(0)


def fed(num_clients: int, num_params: int = 1, num_trainable: int = 1,
        dtype: torch.dtype = torch.float64) -> Federation:
    return Federation(num_clients, num_clients, num_params, num_trainable, dtype)


def arrival(client: int, update: list[float], start_time: float, time: float, staleness: int = 0,
            start: list[float] | None = None, dtype: torch.dtype = torch.float64) -> Arrival:
    update_t = torch.tensor(update, dtype=dtype)
    start_t = torch.zeros_like(update_t) if start is None else torch.tensor(start, dtype=dtype)
    return Arrival(client, update_t, 1, {"loss": 0.0, "steps": 1, "lr": 0.5}, staleness, 0, start_time, time, start_t)


def starts(strategy: AsyncStrategy, now: float, idle: list[int]) -> list[tuple[int, object]]:
    return [(s.client_id, s.config["steps"]) for s in strategy.select(now, np.array(idle), len(idle), RNG)]


def with_group(strategy: FedCompass, clients: list[int], speeds: list[float], steps: list[int], latest: float) -> None:
    """Place `clients` (already seen, with these speeds and step counts) in one group 0 that expires at `latest`."""
    strategy.groups[0] = Group(list(clients), expected=latest / 1.5, latest=latest)
    strategy.group_count = 1
    for c, speed, q in zip(clients, speeds, steps):
        strategy.speed[c], strategy.steps[c], strategy.group_of[c] = speed, q, 0


def test_speed_is_an_ema_of_seconds_per_step() -> None:
    # Prepare: Q_max 4, momentum 0.25
    strategy = FedCompassConfig(steps_min=1, steps_max=4, speed_momentum=0.25).build(fed(1))
    assert starts(strategy, 0.0, [0]) == [(0, 4)]
    x = torch.zeros(1, dtype=torch.float64)
    # Execute: 4 steps in 8 s (first: the observation itself), then 4 steps in 4 s
    strategy.on_arrival(arrival(0, [1.0], 0.0, 8.0), x)
    first = strategy.speed[0]
    strategy.on_arrival(arrival(0, [1.0], 8.0, 12.0), x)
    # Assert: 2, then 0.75 * 2 + 0.25 * 1 = 1.75
    assert (first, strategy.speed[0]) == (2.0, 1.75)


def test_join_group_takes_the_largest_feasible_step_count() -> None:
    # Prepare: Q in [2, 10], the new client does 2 s per step at t = 10
    strategy = FedCompassConfig(steps_min=2, steps_max=10).build(fed(5))
    strategy.speed[4] = 2.0
    expected_times = {0: 20.0, 1: 17.0, 2: 40.0, 3: 11.0}  # Q = 5, 3, 15 (> Q_max), 0 (< Q_min)
    for gid, expected in expected_times.items():
        strategy.groups[gid] = Group([gid], expected, expected * 1.5)
    # Execute
    joined = strategy.join_group(4, 10.0)
    # Assert
    assert joined and strategy.group_of[4] == 0 and strategy.steps[4] == 5 and strategy.groups[0].clients == [0, 4]


def test_join_group_fails_when_no_group_is_feasible() -> None:
    strategy = FedCompassConfig(steps_min=2, steps_max=10).build(fed(2))
    strategy.speed[1] = 2.0
    strategy.groups[0] = Group([0], expected=13.0, latest=16.0)  # Q = 1.5 -> 1 < Q_min
    assert not strategy.join_group(1, 10.0) and 1 not in strategy.group_of


@pytest.mark.parametrize(
    "speed, latest, q",
    [
        (1.5, 12.0, 8),  # floor((12 + 1 * 10 - 10) / 1.5) = 8
        (2.0, 12.0, 6),  # floor(12 / 2) = 6
        (4.0, 12.0, 5),  # floor(12 / 4) = 3 < Q_min: Q_min
        (1.0, 12.0, 10),  # floor(12 / 1) = 12 > Q_max: not a candidate, so Q_max
        (2.0, 10.0, 10),  # the group's latest time has passed: no candidate, so Q_max
    ],
)
def test_create_group_clamps_the_step_count(speed: float, latest: float, q: int) -> None:
    # Prepare: Q in [5, 10], lambda 1.5; one group whose fastest member does 1 s per step; now = 10
    strategy = FedCompassConfig(steps_min=5, steps_max=10, latest_time_factor=1.5).build(fed(3))
    with_group(strategy, [0, 1], [1.0, 3.0], [5, 5], latest)
    strategy.speed[2] = speed
    # Execute
    strategy.create_group(2, 10.0)
    # Assert: a new group 1 timed by Q
    group = strategy.groups[1]
    assert strategy.steps[2] == q and strategy.group_of[2] == 1 and group.clients == [2]
    assert (group.expected, group.latest) == (10.0 + q * speed, 10.0 + q * speed * 1.5)


def test_group_aggregation_weights_are_alpha_times_staleness_over_n() -> None:
    # Prepare: N = 4, alpha 0.8, s = 1 / (1 + tau); clients 0 and 1 in one group
    strategy = FedCompassConfig(alpha=0.8, staleness="polynomial:a=1", steps_min=1, steps_max=4).build(fed(4))
    with_group(strategy, [0, 1], [1.0, 1.0], [4, 4], latest=30.0)
    x = torch.tensor([1.0], dtype=torch.float64)
    # Execute
    first = strategy.on_arrival(arrival(0, [2.0], 0.0, 4.0, staleness=3), x)
    second = strategy.on_arrival(arrival(1, [-1.0], 0.0, 4.0, staleness=0), x)
    # Assert: 1 + 0.2 * (2 / 4) + 0.2 * (-1) = 0.9
    assert first is None and second.tolist() == pytest.approx([0.9], rel=1e-15)


def test_model_buffers_take_the_plain_mean_and_the_dtype_is_kept() -> None:
    # Prepare: one weight and one buffer entry, float32
    strategy = FedCompassConfig(alpha=1.0, staleness="constant", steps_min=1, steps_max=4).build(
        fed(2, num_params=2, num_trainable=1, dtype=torch.float32))
    with_group(strategy, [0, 1], [1.0, 1.0], [4, 4], latest=30.0)
    x = torch.tensor([0.0, 5.0])
    # Execute: buffers end at 4 + 2 = 6 and 0 - 2 = -2
    strategy.on_arrival(arrival(0, [1.0, 2.0], 0.0, 4.0, start=[0.0, 4.0], dtype=torch.float32), x)
    new = strategy.on_arrival(arrival(1, [3.0, -2.0], 0.0, 4.0, start=[0.0, 0.0], dtype=torch.float32), x)
    # Assert: weight 0 + (1 + 3) / 2 = 2; buffer (6 - 2) / 2 = 2
    assert new.dtype == torch.float32 and new.tolist() == [2.0, 2.0]


def test_late_arrival_is_buffered_restarted_at_once_and_aged_until_aggregated() -> None:
    # Prepare: N = 3, Q in [1, 4], alpha 1, s = 1 / (1 + tau), speed = the last observation
    config = FedCompassConfig(steps_min=1, steps_max=4, speed_momentum=1.0, alpha=1.0, staleness="polynomial:a=1")
    strategy = config.build(fed(3))
    assert starts(strategy, 0.0, [0, 1, 2]) == [(0, 4), (1, 4), (2, 4)]
    x = torch.zeros(1, dtype=torch.float64)
    # Execute: c0's first arrival (t 4) opens group A (expected 8, latest 10); its timer fires empty
    x = strategy.on_arrival(arrival(0, [1.0], 0.0, 4.0), x)  # 0 + 1 / 3
    assert starts(strategy, 4.0, [0]) == [(0, 4)] and strategy.next_timer() == 10.0
    assert strategy.on_timer(10.0, x) is None and strategy.next_timer() is None
    # c0 is late at t 11 (speed 7 / 4): buffered, no version, restarted at once in a new group B (expected 18)
    late = strategy.on_arrival(arrival(0, [0.5], 4.0, 11.0, staleness=0), x)
    assert late is None and starts(strategy, 11.0, [0]) == [(0, 4)]
    # c1's first arrival (t 12, tau 1) publishes a version and joins B with floor((18 - 12) / 3) = 2 steps
    x = strategy.on_arrival(arrival(1, [3.0], 0.0, 12.0, staleness=1), x)  # 1/3 + (1/3) (1/2) 3 = 5/6
    assert starts(strategy, 12.0, [1]) == [(1, 2)]
    # both arrive at 18: c0 waits (not restarted), c1 completes B
    waiting = strategy.on_arrival(arrival(0, [-1.0], 11.0, 18.0, staleness=1), x)
    assert waiting is None and starts(strategy, 18.0, [0]) == []
    new = strategy.on_arrival(arrival(1, [2.0], 12.0, 18.0, staleness=0), x)
    # Assert: the late update aged by the version c1 published: tau 0 + 1 -> weight 1/6
    # 5/6 + 0.5/6 - 1/6 + 2/3 = 17/12; restarts fastest first (c0: 1.75 s per step, c1: 3)
    assert new.tolist() == pytest.approx([17 / 12], rel=1e-15)
    assert starts(strategy, 18.0, [0, 1]) == [(0, 4), (1, 2)]


def test_timer_aggregates_the_arrived_and_later_members_are_late() -> None:
    # Prepare: group 0 of clients 0 and 1 expires at 12; only client 0 arrives
    strategy = FedCompassConfig(alpha=1.0, staleness="constant", steps_min=1, steps_max=4).build(fed(2))
    with_group(strategy, [0, 1], [1.0, 2.0], [4, 4], latest=12.0)
    x = torch.zeros(1, dtype=torch.float64)
    assert strategy.on_arrival(arrival(0, [4.0], 4.0, 8.0), x) is None
    # Execute
    early = strategy.on_timer(11.0, x)
    fired = strategy.on_timer(12.0, x)
    # Assert: 0 + 4 / 2; client 0 restarts with Q_max; client 1 arriving afterwards is late
    assert early is None and fired.tolist() == [2.0] and strategy.next_timer() == 12.0 + 4 * 1.5
    assert starts(strategy, 12.0, [0]) == [(0, 4)]
    late = strategy.on_arrival(arrival(1, [1.0], 4.5, 12.5), fired)  # speed 2: joins the new group with 1 step
    assert late is None and starts(strategy, 12.5, [1]) == [(1, 1)]


def test_groups_due_at_one_timer_publish_one_version() -> None:
    # Prepare: groups 0 (client 0) and 1 (client 1) both expire at 12, each with one arrival of staleness 0
    strategy = FedCompassConfig(alpha=1.0, staleness="polynomial:a=1", steps_min=1, steps_max=4).build(fed(4))
    with_group(strategy, [0, 2], [1.0, 1.0], [4, 4], latest=12.0)
    strategy.groups[1], strategy.group_count = Group([1, 3], expected=8.0, latest=12.0), 2
    for c in (1, 3):
        strategy.speed[c], strategy.steps[c], strategy.group_of[c] = 1.0, 4, 1
    x = torch.zeros(1, dtype=torch.float64)
    strategy.on_arrival(arrival(0, [4.0], 4.0, 8.0), x)
    strategy.on_arrival(arrival(1, [8.0], 4.0, 8.0), x)
    # Execute
    new = strategy.on_timer(12.0, x)
    # Assert: both with tau 0 (one version, not two): 4 / 4 + 8 / 4
    assert new.tolist() == [3.0] and strategy.versions == 1 and starts(strategy, 12.0, [0, 1]) == [(0, 4), (1, 4)]


def test_instantaneous_clients_get_a_tiny_positive_speed() -> None:
    strategy = FedCompassConfig(steps_min=1, steps_max=4).build(fed(1))
    starts(strategy, 0.0, [0])
    strategy.on_arrival(arrival(0, [1.0], 0.0, 0.0), torch.zeros(1, dtype=torch.float64))
    assert strategy.speed[0] > 0 and starts(strategy, 0.0, [0]) == [(0, 4)]


def test_a_lost_task_leaves_its_group_and_gets_a_new_one() -> None:
    # Prepare: client 1's task in group 0 failed, so the loop reports it idle
    strategy = FedCompassConfig(steps_min=1, steps_max=4).build(fed(2))
    with_group(strategy, [0, 1], [1.0, 2.0], [4, 2], latest=12.0)
    # Execute
    started = starts(strategy, 5.0, [1])
    # Assert: joins group 0 again with floor((8 - 5) / 2) = 1 step
    assert started == [(1, 1)] and strategy.groups[0].clients == [0, 1]


def test_inputs_are_not_changed() -> None:
    strategy = FedCompassConfig(steps_min=1, steps_max=4).build(fed(2, num_params=2, num_trainable=1))
    x, update, start = torch.tensor([1.0, 2.0]), [0.5, -0.5], [1.0, 2.0]
    starts(strategy, 0.0, [0, 1])
    a = arrival(0, update, 0.0, 4.0, start=start, dtype=torch.float32)
    strategy.on_arrival(a, x)
    assert x.tolist() == [1.0, 2.0] and a.update.tolist() == update and a.start_params.tolist() == start


@pytest.mark.parametrize(
    "options, message",
    [
        ({"concurrency": -1}, "concurrency must be >= 0"),
        ({"steps_min": 0}, r"need 1 <= steps_min <= steps_max, got 0, 100"),
        ({"steps_min": 30, "steps_max": 20}, r"need 1 <= steps_min <= steps_max, got 30, 20"),
        ({"speed_momentum": 1.5}, r"speed_momentum must be in \[0, 1\]"),
        ({"latest_time_factor": 0.5}, "latest_time_factor must be >= 1"),
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"staleness": "linear"}, "unknown staleness function 'linear'"),
    ],
)
def test_bad_options_raise_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        FedCompassConfig(**options)
    assert "\n" not in str(err.value)


def test_trace_two_clients_on_the_event_loop() -> None:
    # Prepare: client 0 takes 2 s per step, client 1 1 s; Q in [2, 4]; alpha 1, s = 1 / (1 + tau), N = 2
    config = FedCompassConfig(steps_min=2, steps_max=4, alpha=1.0, staleness="polynomial:a=1")

    def local(x: float, center: float, q: int) -> float:  # q steps of GD with lr 0.5
        return center + (x - center) * 0.5**q

    # Execute
    trace = run_async(config.build(fed(2)), centers=[1.0, -1.0], seconds_per_step=[2.0, 1.0], versions=6)
    # Assert: t 4 c1 first (opens group A: expected 8, latest 10); t 8 c0 first (tau 1): A would give
    # floor(0 / 2) < Q_min steps, so it opens B with floor((10 + 1 * 4 - 8) / 2) = 3 steps (14, 17) and starts at
    # once on v2; c1 completes A (tau 1) and opens C with Q_max (B's estimate floor((17 + 2 * 4 - 8) / 1) = 17 >
    # Q_max): (12, 14), starting on v3; t 12 c1 completes C alone and joins B with floor((14 - 12) / 1) = 2; t 14
    # c0 (tau 2: v3 and v4 since its start) waits, c1 (tau 0) completes B; c1 (fastest) opens D with Q_max, c0
    # joins it with floor(4 / 2) = 2; t 18 D arrives fresh
    assert [s[:2] + (s[2]["steps"],) for s in trace.starts[:8]] == [
        (0.0, 0, 4), (0.0, 1, 4), (4.0, 1, 4), (8.0, 0, 3), (8.0, 1, 4), (12.0, 1, 2), (14.0, 1, 4), (14.0, 0, 2)]
    assert [a[:3] for a in trace.arrivals] == [
        (4.0, 1, 0), (8.0, 0, 1), (8.0, 1, 1), (12.0, 1, 0), (14.0, 0, 2), (14.0, 1, 0), (18.0, 0, 0), (18.0, 1, 0)]
    v1 = 0.0 + 0.5 * local(0.0, -1.0, 4)
    v2 = v1 + 0.25 * local(0.0, 1.0, 4)
    v3 = v2 + 0.25 * (local(v1, -1.0, 4) - v1)
    v4 = v3 + 0.5 * (local(v3, -1.0, 4) - v3)
    v5 = v4 + (1 / 3) / 2 * (local(v2, 1.0, 3) - v2) + 0.5 * (local(v4, -1.0, 2) - v4)
    v6 = v5 + 0.5 * (local(v5, 1.0, 2) - v5) + 0.5 * (local(v5, -1.0, 4) - v5)
    assert [p[0] for p in trace.published] == [4.0, 8.0, 8.0, 12.0, 14.0, 18.0]
    assert [p[1] for p in trace.published] == pytest.approx([v1, v2, v3, v4, v5, v6], rel=1e-14)


@pytest.mark.parametrize("seconds_per_step", [[1.0, 2.0, 4.0], [1.0, 3.0, 5.0]])
def test_fixed_speeds_settle_the_step_counts_and_drive_staleness_to_zero(seconds_per_step: list[float]) -> None:
    # Prepare: Q in [5, 40]
    config = FedCompassConfig(steps_min=5, steps_max=40)
    # Execute
    trace = run_async(config.build(fed(3)), centers=[1.0, 0.0, -1.0], seconds_per_step=seconds_per_step,
                      versions=40, lr=0.05)
    # Assert: after the first rounds every arrival is fresh, and each client runs floor(40 / its time per step)
    # steps, so that all of one group arrive within one step of the fastest
    assert len(trace.published) == 40
    assert all(staleness == 0 for _, _, staleness, _ in trace.arrivals[len(trace.arrivals) // 2:])
    settled = {client: config["steps"] for _, client, config in trace.starts[-3:]}
    assert settled == {c: int(40 // s) for c, s in enumerate(seconds_per_step)}
    times = [settled[c] * s for c, s in enumerate(seconds_per_step)]
    assert max(times) - min(times) < max(seconds_per_step)


def test_registry_builds_the_config() -> None:
    config = strategy_config("fedcompass", {"steps_min": 5, "steps_max": 40, "alpha": 1})
    strategy = config.build(fed(3))
    assert isinstance(strategy, FedCompass) and strategy.concurrency == 3 and config.alpha == 1.0
    assert strategy.select(0.0, np.array([0, 1, 2]), 3, RNG) == [Start(c, {"steps": 40}) for c in range(3)]
