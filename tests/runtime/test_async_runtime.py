"""Asynchronous strategies on the runtime, end to end: reductions to synchronous FedAvg, one client's model, the same
parameters and event trace on every path, staleness limits, dropouts, the clock limit, and what a run writes."""

from __future__ import annotations

import json

import pytest
import torch

from fl.params import ParamSpec
from fl.scenario import build_data, build_model_fn
from fl.seeding import INIT, TRAINING, derive_seed
from fl.simulation import run_simulation
from fl.training import LocalTrainer
from strategies.base import ClientHook
from tests.conftest import small_config

SAME_SPEED = ('devices.latency="constant:value=1"',)  # every task takes one virtual second
HETEROGENEOUS = ('devices.compute="lognormal:median=0.002,sigma=1.0"', 'devices.bandwidth_up="uniform:low=1e5,high=1e6"',
                 'devices.latency="constant:value=0.2"', 'devices.dropout="constant:value=0.2"',
                 'devices.availability="bernoulli:p=0.8"', 'transport.uplink="ef21(topk:ratio=0.1)"')


def run(tmp_path, *overrides: str, write: bool = False):
    return run_simulation(small_config(tmp_path, "eval.every=0", *overrides), show_progress=False, write=write)


def test_fedbuff_with_the_whole_population_in_one_buffer_is_fedavg_bit_for_bit_at_its_first_version(tmp_path) -> None:
    # Prepare: 6 clients of equal speed; FedBuff starts all, buffers all 6, sample weights normalised, server lr 1.
    # Only the first version: clients 0-4 restart at once on the version they arrived at, before client 5's arrival
    # publishes the next one, so their second updates are stale (the papers' event order)
    population = ("data.num_clients=6", "sampling.per_round=6", "rounds=1", *SAME_SPEED)
    fedbuff = ('strategy.name="fedbuff"', "strategy.concurrency=6", "strategy.buffer_size=6",
               'strategy.weights="samples"', 'strategy.normalize="weights"', 'strategy.staleness="constant"')
    # Execute
    synchronous = run(tmp_path, *population)
    asynchronous = run(tmp_path, *population, *fedbuff)
    # Assert
    assert torch.equal(asynchronous.global_params, synchronous.global_params)
    assert [m["virtual_time"] for m in asynchronous.history] == [m["virtual_time"] for m in synchronous.history]
    assert [m["staleness_max"] for m in asynchronous.history] == [0]
    at_one = [(kind, client) for _, time, kind, client in asynchronous.events if time == 1.0]
    assert at_one == [(kind, client) for client in range(6) for kind in ("arrive", "start")]


def test_fedfix_with_an_interval_longer_than_every_task_is_fedavg_bit_for_bit(tmp_path) -> None:
    population = ("data.num_clients=6", "sampling.per_round=6", "rounds=3", 'devices.compute="uniform:low=1e-4,high=1e-3"')
    synchronous = run(tmp_path, *population)
    fedfix = run(tmp_path, *population, 'strategy.name="fedfix"', "strategy.interval=1000.0")
    assert torch.equal(fedfix.global_params, synchronous.global_params)
    assert [m["virtual_time"] for m in fedfix.history] == [1000.0, 2000.0, 3000.0]


def test_fedasync_with_alpha_one_replaces_the_model_with_the_clients(tmp_path) -> None:
    # Prepare: one client in flight, alpha 1, constant staleness weight; float64 updates carry the model exactly
    config = small_config(tmp_path, "rounds=1", "eval.every=0", 'strategy.name="fedasync"', "strategy.concurrency=1",
                          "strategy.alpha=1.0", 'strategy.staleness="constant"', 'client.update_dtype="float64"')
    # Execute
    result = run_simulation(config, show_progress=False, write=False)
    # Assert: the global model is what the first started client trains on its own from the initial model
    client = next(c for _, _, kind, c in result.events if kind == "start")
    data = build_data(config.data, config.seed)
    model_fn = build_model_fn(config.model, data)
    torch.manual_seed(derive_seed(config.seed, INIT))
    initial = ParamSpec.from_module(model := model_fn()).flatten(model)
    lo, hi = data.offsets[client], data.offsets[client + 1]
    x, y = torch.from_numpy(data.x[lo:hi]), torch.from_numpy(data.y[lo:hi])
    outcome = LocalTrainer(model_fn(), torch.device("cpu")).train(
        initial, x, y, config.client, derive_seed(config.seed, 1, client, TRAINING), ClientHook())
    assert result.history[0]["staleness_max"] == 0
    assert torch.equal(result.global_params, (initial.double() + outcome.update).float())


def test_the_same_seed_gives_the_same_run_on_every_path(tmp_path, ray_session) -> None:
    paths = {
        "local, direct": ('runtime.backend="local"', 'transport.channel="direct"'),
        "local, grpc": ('runtime.backend="local"', 'transport.channel="grpc"'),
        "ray 1 worker, grpc": ('runtime.backend="ray"', "runtime.num_workers=1", 'transport.channel="grpc"'),
        "ray 2 workers, direct": ('runtime.backend="ray"', "runtime.num_workers=2", 'transport.channel="direct"'),
    }
    fedbuff = ('strategy.name="fedbuff"', "strategy.concurrency=6", "strategy.buffer_size=2", "strategy.max_staleness=3")
    results = {name: run(tmp_path, "rounds=8", *fedbuff, *HETEROGENEOUS, *settings) for name, settings in paths.items()}

    reference = results["local, direct"]
    kinds = {kind for _, _, kind, _ in reference.events}
    assert {"start", "arrive", "drop"} <= kinds  # dropouts happen
    for name, result in results.items():
        assert torch.equal(result.global_params, reference.global_params), name
        assert result.events == reference.events, name
        assert result.history == reference.history or _same_rows(result.history, reference.history), name


def _same_rows(rows: list[dict], reference: list[dict]) -> bool:
    """Equal rows apart from wall time and byte counts (gRPC frames carry headers the direct channel does not)."""
    skip = {"wall_seconds", "bytes_up", "bytes_down", "bytes_by_client"}
    return [{k: v for k, v in r.items() if k not in skip} for r in rows] == \
        [{k: v for k, v in r.items() if k not in skip} for r in reference]


def test_arrivals_staler_than_the_limit_are_counted_and_not_applied(tmp_path) -> None:
    # Prepare: FedAsync publishes on every arrival, so with 8 in flight and very different speeds staleness grows
    options = ('strategy.name="fedasync"', "strategy.concurrency=8", 'devices.compute="lognormal:median=0.002,sigma=2"')
    # Execute
    unlimited = run(tmp_path, "rounds=30", *options)
    limited = run(tmp_path, "rounds=30", *options, "strategy.max_staleness=2", 'transport.channel="grpc"')
    # Assert
    assert max(m["staleness_max"] for m in unlimited.history) > 2
    assert max(m["staleness_max"] for m in limited.history) <= 2
    assert sum(m["stale"] for m in limited.history) > 0
    assert sum(kind == "stale" for _, _, kind, _ in limited.events) == sum(m["stale"] for m in limited.history)


def test_the_clock_limit_ends_the_run_and_evaluates_it(tmp_path) -> None:
    for strategy in ("fedasync", "fedavg"):
        result = run(tmp_path, "rounds=1000", "max_virtual_seconds=3.0", f'strategy.name="{strategy}"', *SAME_SPEED)
        last = result.history[-1]
        assert last["ended"] and last["virtual_time"] == 3.0 and "test_accuracy" in last, strategy
        assert all(m["virtual_time"] <= 3.0 and "ended" not in m for m in result.history[:-1]), strategy


def test_an_asynchronous_run_in_which_every_task_fails_ends_with_a_warning(tmp_path) -> None:
    with pytest.warns(RuntimeWarning, match="events in a row brought no update"):
        result = run(tmp_path, "rounds=5", 'strategy.name="fedasync"', 'devices.dropout="constant:value=1"',
                     'devices.latency="constant:value=1"')
    assert len(result.history) == 1 and result.history[0]["ended"] and result.history[0]["clients"] == 0


def test_a_run_writes_its_staleness_histogram_and_events(tmp_path) -> None:
    result = run(tmp_path, "rounds=6", 'strategy.name="fedasync"', "strategy.concurrency=4",
                 'devices.compute="uniform:low=1e-3,high=1e-2"', write=True)
    counts = json.loads((result.run_dir / "staleness.json").read_text())
    assert sum(counts.values()) == sum(m["clients"] for m in result.history) == 6
    assert (result.run_dir / "staleness.png").stat().st_size > 0
    lines = (result.run_dir / "events.jsonl").read_text().splitlines()
    assert len(lines) == len(result.events) and json.loads(lines[0])["kind"] == "start"


def test_memory_follows_the_clients_in_flight(tmp_path) -> None:
    """200 registered clients, 4 in flight: the loop keeps at most 4 snapshots and stores no client state."""
    config = small_config(tmp_path, "data.num_clients=200", "rounds=20", "eval.every=0", 'strategy.name="fedbuff"',
                          "strategy.concurrency=4", "strategy.buffer_size=2", 'devices.compute="uniform:low=1e-3,high=1e-2"')
    from fl.pool import LocalPool
    from fl.server import Server
    from fl.simulation import server_setup
    from fl.worker import Worker
    from transport.inprocess import InProcessChannel

    data = build_data(config.data, config.seed)
    server = Server(server_setup(config, data, build_model_fn(config.model, data)), InProcessChannel,
                    lambda setup, endpoint: LocalPool(Worker(setup, endpoint)))
    peak = 0
    for round in range(1, 21):
        server.run_round(round)
        peak = max(peak, len(server.loop.snapshots), len(server.loop.flights))
    assert peak <= 4
    assert len(server.store) == 0 and server.decoder.states == {}


def test_fl_plot_overlays_a_synchronous_and_an_asynchronous_run_against_virtual_time(tmp_path) -> None:
    from fl.plot import runs_figure

    devices = 'devices.compute="uniform:low=1e-3,high=1e-2"'
    sync = run(tmp_path, "rounds=3", "eval.every=1", devices, write=True)
    asynchronous = run(tmp_path, "rounds=6", "eval.every=1", 'strategy.name="fedbuff"', "strategy.buffer_size=2",
                       devices, write=True)
    figure = runs_figure([sync.run_dir, asynchronous.run_dir], x="time")
    accuracy = figure.axes[0]
    curves = {line.get_label(): list(line.get_xdata()) for line in accuracy.get_lines()}
    assert curves[sync.run_dir.name] == [m["virtual_time"] for m in sync.history]
    assert curves[asynchronous.run_dir.name] == [m["virtual_time"] for m in asynchronous.history]
