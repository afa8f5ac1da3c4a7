"""FedBuff: a version every K arrivals, the weighted sum (or mean) of the buffer, FedAvg and plain SGD equivalences."""

import math

import pytest
import torch

from strategies.asynchronous.base import Arrival
from strategies.asynchronous.fedbuff import FedBuff, FedBuffConfig
from strategies.base import Federation, Reply
from strategies.fedavg import FedAvgConfig
from strategies.registry import strategy_config
from tests.strategies.async_driver import run_async

TWO = Federation(num_clients=2, per_round=2, num_params=1, num_trainable=1, dtype=torch.float64)
ROOT2 = math.sqrt(2)

FED = Federation(num_clients=4, per_round=4, num_params=2, num_trainable=2, dtype=torch.float64)


def arrival(update: list[float] | torch.Tensor, num_samples: int = 1, staleness: int = 0) -> Arrival:
    update = torch.as_tensor(update, dtype=torch.float64)
    return Arrival(
        client_id=0, update=update, num_samples=num_samples, metrics={"loss": 0.0, "steps": 1, "lr": 0.5},
        staleness=staleness, start_version=0, start_time=0.0, time=1.0, start_params=torch.zeros_like(update),
    )


def test_publishes_exactly_every_k_arrivals_the_sum_of_updates() -> None:
    # Prepare: K = 3, equal weights, no staleness scaling
    strategy = FedBuffConfig(buffer_size=3, staleness="constant", normalize="sum").build(FED)
    updates = [[1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [-1.0, -1.0], [0.0, 0.25], [0.5, 0.5]]
    global_params, published = torch.tensor([1.0, 1.0], dtype=torch.float64), []
    # Execute
    for update in updates:
        new = strategy.on_arrival(arrival(update), global_params)
        published.append(None if new is None else new.tolist())
        global_params = global_params if new is None else new
    # Assert: [1, 1] + [3.5, 1] = [4.5, 2], then [4.5, 2] + [-0.5, -0.25] = [4, 1.75]
    assert published == [None, None, [4.5, 2.0], None, None, [4.0, 1.75]]


@pytest.mark.parametrize(
    "normalize, expected",
    [
        # weights 2 * 1 (2 samples, tau 0) and 4 * (1 + 3)^-0.5 = 2; sum 2 [1, -2] + 2 [4, 8] = [10, 12];
        # [0, 1] + 0.5 * [10, 12] = [5, 7]
        ("sum", [5.0, 7.0]),
        # mean [10, 12] / 4 = [2.5, 3]; [0, 1] + 0.5 * [2.5, 3] = [1.25, 2.5]
        ("weights", [1.25, 2.5]),
        # the sum over K = 2 arrivals: [5, 6]; [0, 1] + 0.5 * [5, 6] = [2.5, 4]
        ("count", [2.5, 4.0]),
    ],
)
def test_sample_and_staleness_weights(normalize: str, expected: list[float]) -> None:
    # Prepare
    config = FedBuffConfig(buffer_size=2, weights="samples", normalize=normalize, server_lr=0.5)
    strategy = config.build(FED)
    global_params = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # Execute
    first = strategy.on_arrival(arrival([1.0, -2.0], num_samples=2, staleness=0), global_params)
    second = strategy.on_arrival(arrival([4.0, 8.0], num_samples=4, staleness=3), global_params)
    # Assert
    assert first is None and second.tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normalized_sample_weights_equal_fedavg_bit_for_bit(dtype: torch.dtype) -> None:
    # Prepare: random updates with sample counts 3, 5, 7 and some staleness (constant weights ignore it)
    gen = torch.Generator().manual_seed(3)
    fed = Federation(num_clients=3, per_round=3, num_params=40, num_trainable=30, dtype=dtype)
    global_params = torch.randn(40, generator=gen, dtype=torch.float64).to(dtype)
    updates = [torch.randn(40, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3)]
    config = FedBuffConfig(buffer_size=3, staleness="constant", weights="samples", normalize="weights")
    strategy = config.build(fed)
    metrics = {"loss": 0.0, "steps": 1, "lr": 0.5}
    # Execute
    for cid, (update, samples) in enumerate(zip(updates, [3, 5, 7])):
        item = Arrival(cid, update, samples, metrics, cid, 0, 0.0, 1.0, torch.zeros_like(update))
        got = strategy.on_arrival(item, global_params)
    replies = [Reply(cid, update, samples, metrics) for cid, (update, samples) in enumerate(zip(updates, [3, 5, 7]))]
    expected, _ = FedAvgConfig().build(fed).aggregate(0, global_params, replies)
    # Assert
    assert got.dtype == dtype and torch.equal(got, expected)


def test_server_momentum_equals_plain_torch_sgd() -> None:
    # Prepare: K = 1, so every arrival is one SGD step on -update
    updates = [[1.0, -0.5], [0.25, 2.0], [-1.5, 1.0]]
    strategy = FedBuffConfig(buffer_size=1, staleness="constant", server_lr=0.5, momentum=0.9).build(FED)
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.5, momentum=0.9)
    global_params = param.detach().clone()
    # Execute
    for update in updates:
        global_params = strategy.on_arrival(arrival(update), global_params)
        param.grad = -torch.tensor(update, dtype=torch.float64)
        optimizer.step()
        # Assert: bit for bit at every version
        assert torch.equal(global_params, param.detach())
    assert global_params.tolist() != [1.0 + 0.5 * -0.25, 2.0 + 0.5 * 2.5]  # what no momentum would give


def test_model_buffers_take_the_weighted_mean_of_their_deltas() -> None:
    # Prepare: 2 trainable entries and 1 buffer (e.g. a BatchNorm statistic)
    fed = Federation(num_clients=2, per_round=2, num_params=3, num_trainable=2, dtype=torch.float64)
    strategy = FedBuffConfig(buffer_size=2, staleness="constant", server_lr=0.5, normalize="sum").build(fed)
    global_params = torch.zeros(3, dtype=torch.float64)
    # Execute
    strategy.on_arrival(arrival([1.0, 1.0, 2.0]), global_params)
    new = strategy.on_arrival(arrival([3.0, 1.0, 4.0]), global_params)
    # Assert: trainable 0.5 * [4, 2]; buffer the mean (2 + 4) / 2, without server lr
    assert new.tolist() == [2.0, 1.0, 3.0]


def test_zero_total_weight_publishes_the_global_model_unchanged() -> None:
    strategy = FedBuffConfig(buffer_size=2, weights="samples", normalize="weights").build(FED)
    global_params = torch.tensor([1.0, -1.0], dtype=torch.float64)
    strategy.on_arrival(arrival([5.0, 5.0], num_samples=0), global_params)
    assert strategy.on_arrival(arrival([7.0, 7.0], num_samples=0), global_params).tolist() == [1.0, -1.0]


def test_inputs_are_not_changed() -> None:
    # Prepare
    strategy = FedBuffConfig(buffer_size=1).build(FED)
    item, global_params = arrival([1.0, 2.0], staleness=2), torch.tensor([3.0, 4.0], dtype=torch.float64)
    before = (item.update.clone(), global_params.clone())
    # Execute
    new = strategy.on_arrival(item, global_params)
    # Assert
    assert new is not global_params and torch.equal(item.update, before[0]) and torch.equal(global_params, before[1])


def test_build_sets_concurrency_and_staleness_limit() -> None:
    assert FedBuffConfig().build(FED).concurrency == 4 and FedBuffConfig().build(FED).max_staleness is None
    strategy = FedBuffConfig(concurrency=2, max_staleness=0).build(FED)
    assert isinstance(strategy, FedBuff) and strategy.concurrency == 2 and strategy.max_staleness == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"buffer_size": 0}, r"fedbuff: buffer_size must be >= 1, got 0"),
        ({"weights": "sqrt"}, r"fedbuff: weights must be one of equal, samples, got 'sqrt'"),
        ({"server_lr": 0.0}, r"fedbuff: server_lr must be > 0, got 0.0"),
        ({"momentum": 1.0}, r"fedbuff: momentum must be in \[0, 1\), got 1.0"),
        ({"staleness": "hinge:c=1"}, r"bad staleness parameter 'c=1' in 'hinge:c=1'"),
        ({"max_staleness": -3}, r"max_staleness must be >= 0, or -1 for no limit, got -3"),
    ],
)
def test_bad_options_raise_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        FedBuffConfig(**options)
    assert "\n" not in str(err.value)


def test_trace_with_a_buffer_of_two() -> None:
    # Prepare: centers 0 and 10, 1 and 3 seconds per step, one GD step with lr 0.5: update = 0.5 (c - x_start)
    strategy = FedBuffConfig(concurrency=2, buffer_size=2, server_lr=0.5, normalize="sum").build(TWO)
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 3.0], versions=3, x0=4.0)
    # Assert: t=1, 2 client 0 sends -2 twice (both from v0): x = 4 + 0.5 * -4 = 2 (v1); t=3 client 0 sends -1 and
    # restarts from v1 at once (x = 2), then client 1 (tau 1, weight 1/sqrt 2) sends 3: x2 = 2 + 0.5 (-1 + 3/sqrt 2)
    # (v2); t=4 client 0 (from v1, tau 1) sends -1 with weight 1/sqrt 2 and restarts from x2; t=5 client 0 (from v2,
    # tau 0) sends -x2/2: x3 = x2 + 0.5 (-1/sqrt 2 - x2/2) = 0.75 x2 - 0.5/sqrt 2
    x2 = 1.5 + 1.5 / ROOT2
    x3 = 0.75 * x2 - 0.5 / ROOT2
    expected = [(1.0, 0, 0, 4.0), (2.0, 0, 0, 2.0), (3.0, 0, 0, 2.0), (3.0, 1, 1, x2), (4.0, 0, 1, x2), (5.0, 0, 0, x3)]
    assert [a[:3] for a in trace.arrivals] == [e[:3] for e in expected]
    assert [a[3] for a in trace.arrivals] == pytest.approx([e[3] for e in expected], rel=1e-14)
    assert [t for t, _ in trace.published] == [2.0, 3.0, 5.0]
    assert trace.final == pytest.approx(x3, rel=1e-14)


def test_trace_with_a_buffer_of_one() -> None:
    # Prepare: K = 1 is asynchronous SGD on the staleness-weighted pseudo-gradients
    strategy = FedBuffConfig(concurrency=2, buffer_size=1).build(TWO)
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 3.0], versions=5, x0=4.0)
    # Assert: client 0 halves x at t=1, 2, 3 (4 -> 2 -> 1 -> 0.5) and restarts from 0.5 at once; client 1 started
    # at v0 arrives at t=3 with tau 3 and sends 0.5 (10 - 4) = 3 weighted (1 + 3)^-0.5: x = 0.5 + 1.5 = 2; at t=4
    # client 0 (tau 1) sends 0.5 (0 - 0.5) = -0.25 weighted 2^-0.5: x = 2 - 0.25 / sqrt 2
    last = 2.0 - 0.25 / ROOT2
    assert trace.arrivals[:4] == [(1.0, 0, 0, 2.0), (2.0, 0, 0, 1.0), (3.0, 0, 0, 0.5), (3.0, 1, 3, 2.0)]
    assert trace.arrivals[4][:3] == (4.0, 0, 1) and trace.arrivals[4][3] == pytest.approx(last, rel=1e-14)
    assert trace.published == [(t, x) for t, _, _, x in trace.arrivals]
    assert trace.final == pytest.approx(last, rel=1e-14)


def test_trace_drops_arrivals_staler_than_max_staleness() -> None:
    # Prepare: as above, with max_staleness 2
    strategy = FedBuffConfig(concurrency=2, buffer_size=1, max_staleness=2).build(TWO)
    # Execute
    trace = run_async(strategy, centers=[0.0, 10.0], seconds_per_step=[1.0, 3.0], versions=5, x0=4.0)
    # Assert: client 1 arrives at t=3 with tau 3 and the runtime drops it; only client 0 halves x, and client 1's
    # next task (from v3) would arrive at t=6, after the 5th version
    assert trace.arrivals == [(float(t), 0, 0, 4.0 / 2**t) for t in range(1, 6)]


def test_registry_builds_the_config() -> None:
    # Passes once "fedbuff" is registered to FedBuffConfig.
    config = strategy_config("fedbuff", {"buffer_size": 2, "normalize": "weights"})
    assert isinstance(config, FedBuffConfig) and config.buffer_size == 2 and config.normalize == "weights"
