"""Synchronous rounds on the virtual clock, end to end: hand-checkable device tables, deadlines, over-selection,
availability traces, dropouts, and the same parameters and event trace on every path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from fl.simulation import run_simulation
from strategies.base import Federation, Instruction, Reply, SyncStrategy, WeightedMean, apply_mean_update, sample_uniform
from strategies.registry import STRATEGIES, register
from tests.conftest import small_config

LATENCIES = [1.0, 2.0, 3.0, 4.0, 5.0]  # client i's task takes LATENCIES[i] virtual seconds


def latency_table(tmp_path) -> str:
    path = tmp_path / "devices.csv"
    path.write_text("client,latency\n" + "".join(f"{c},{s}\n" for c, s in enumerate(LATENCIES)))
    return str(path)


def five_clients(tmp_path, *overrides: str):
    """Five clients whose tasks take 1..5 virtual seconds (no compute or transfer time)."""
    return small_config(tmp_path, "data.num_clients=5", "rounds=2", "eval.every=0",
                        f'devices.table="{latency_table(tmp_path)}"', *overrides)


def test_over_selection_keeps_the_four_fastest_of_five_and_counts_the_fifth_late(tmp_path) -> None:
    result = run_simulation(five_clients(tmp_path, "sampling.per_round=4", "sampling.over_select=1.3"),
                            show_progress=False)

    first, second = result.history
    assert (first["clients"], first["late"], first["dropped"], first["unavailable"]) == (4, 1, 0, 0)
    assert first["round_seconds_virtual"] == 4.0 and first["virtual_time"] == 4.0 and second["virtual_time"] == 8.0
    assert [(t, kind, c) for r, t, kind, c in result.events if r == 1] == [
        (1.0, "arrive", 0), (2.0, "arrive", 1), (3.0, "arrive", 2), (4.0, "arrive", 3), (5.0, "arrive", 4)]
    assert set(first["bytes_by_client"]) == {"0", "1", "2", "3"}  # the late client's result is never collected
    assert (result.run_dir / "events.jsonl").read_text().count("\n") == len(result.events) == 10


def test_a_deadline_cuts_two_of_five(tmp_path) -> None:
    result = run_simulation(five_clients(tmp_path, "sampling.per_round=5", "sampling.deadline=3.5"),
                            show_progress=False)

    assert all((m["clients"], m["late"], m["round_seconds_virtual"]) == (3, 2, 3.5) for m in result.history)
    assert result.history[-1]["virtual_time"] == 7.0


def test_an_availability_trace_makes_a_client_miss_a_round(tmp_path) -> None:
    """Client 2 is offline from 5 s to 10 s: round 1 (0 to 5 s) has all five, round 2 starts at 5 s without it."""
    trace = tmp_path / "trace.csv"
    trace.write_text("trace,start,end\n" + "".join(f"{t},0,100\n" for t in (0, 1, 3, 4)) + "2,0,5\n2,10,100\n")
    result = run_simulation(five_clients(tmp_path, "sampling.per_round=5",
                                         f'devices.availability="trace:file={trace},period=100"'), show_progress=False)

    first, second = result.history
    assert (first["clients"], first["unavailable"]) == (5, 0)
    assert (second["clients"], second["unavailable"]) == (4, 1) and "2" not in second["bytes_by_client"]


def test_dropout_one_gives_empty_rounds_that_keep_the_model(tmp_path) -> None:
    config = five_clients(tmp_path, "sampling.per_round=3", 'devices.dropout="constant:value=1"', "eval.every=1")
    result = run_simulation(config, show_progress=False)
    untrained = run_simulation(small_config(tmp_path, "data.num_clients=5", "rounds=1", "eval.every=0",
                                            'devices.dropout="constant:value=1"'), show_progress=False)

    assert all((m["clients"], m["dropped"], m["train_loss"]) == (0, 3, None) for m in result.history)
    assert result.history[0]["test_accuracy"] == result.history[1]["test_accuracy"]
    assert torch.equal(result.global_params, untrained.global_params)
    assert [kind for _, _, kind, _ in result.events] == ["drop"] * 6


HETEROGENEOUS = ('devices.compute="lognormal:median=0.002,sigma=1.0"', 'devices.bandwidth_up="uniform:low=1e5,high=1e6"',
                 'devices.bandwidth_down="uniform:low=1e6,high=1e7"', 'devices.latency="constant:value=0.2"',
                 'devices.dropout="constant:value=0.2"', 'devices.availability="bernoulli:p=0.8"',
                 "sampling.over_select=1.5", "sampling.deadline=4", 'transport.uplink="ef21(topk:ratio=0.1)"')


def test_profiles_give_the_same_parameters_and_events_on_every_path(tmp_path, ray_session) -> None:
    runs = {
        "local, direct": ('runtime.backend="local"', 'transport.channel="direct"'),
        "local, grpc": ('runtime.backend="local"', 'transport.channel="grpc"'),
        "ray 1 worker, grpc": ('runtime.backend="ray"', "runtime.num_workers=1", 'transport.channel="grpc"'),
        "ray 2 workers, direct": ('runtime.backend="ray"', "runtime.num_workers=2", 'transport.channel="direct"'),
    }
    results = {name: run_simulation(small_config(tmp_path, "rounds=4", *HETEROGENEOUS, *settings),
                                    show_progress=False, write=False) for name, settings in runs.items()}

    reference = results["local, direct"]
    counted = [(m["clients"], m["late"], m["dropped"], m["unavailable"]) for m in reference.history]
    assert sum(late + dropped + unavailable for _, late, dropped, unavailable in counted) > 0  # the profiles bite
    for name, result in results.items():
        assert torch.equal(result.global_params, reference.global_params), name
        assert result.events == reference.events, name
        assert [m["virtual_time"] for m in result.history] == [m["virtual_time"] for m in reference.history], name


# A strategy that changes its input in place and returns it: made harmless by the runtime.

@dataclass
class InPlaceConfig:
    """FedAvg that writes the new parameters into its input tensor and returns that tensor."""

    def build(self, federation: Federation) -> "InPlaceFedAvg":
        return InPlaceFedAvg(federation)


class InPlaceFedAvg(SyncStrategy):
    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    def configure(self, round: int, global_params: Tensor, available: Sequence[int], rng: np.random.Generator
                  ) -> list[Instruction]:
        return [Instruction(c) for c in sample_uniform(available, self.federation.per_round, rng)]

    def aggregate(self, round: int, global_params: Tensor, replies: Iterable[Reply]) -> tuple[Tensor, dict]:
        mean = WeightedMean()
        for reply in replies:
            mean.add(reply.update, reply.num_samples)
        return global_params.copy_(apply_mean_update(global_params, mean.result())), {}


@pytest.fixture
def in_place_strategy():
    register("in_place_fedavg", InPlaceConfig)
    yield "in_place_fedavg"
    del STRATEGIES["in_place_fedavg"]


def test_a_strategy_that_changes_its_input_in_place_gives_fedavg_on_both_channels(tmp_path, in_place_strategy) -> None:
    def final(strategy: str, channel: str) -> Tensor:
        config = small_config(tmp_path, f'strategy.name="{strategy}"', f'transport.channel="{channel}"')
        return run_simulation(config, show_progress=False, write=False).global_params

    fedavg = final("fedavg", "direct")
    assert torch.equal(final(in_place_strategy, "direct"), fedavg)
    assert torch.equal(final(in_place_strategy, "grpc"), fedavg)


def test_a_round_with_nobody_online_lasts_until_someone_may_come_online(tmp_path) -> None:
    """Everyone is online in [50, 100) of each 100 s: round 1 at 0 s has no one and ends at 50 s; round 2 trains."""
    trace = tmp_path / "trace.csv"
    trace.write_text("trace,start,end\n0,50,100\n")
    result = run_simulation(five_clients(tmp_path, "sampling.per_round=5",
                                         f'devices.availability="trace:file={trace},period=100"'), show_progress=False)

    first, second = result.history
    assert (first["clients"], first["unavailable"], first["virtual_time"]) == (0, 5, 50.0)
    assert (second["clients"], second["virtual_time"]) == (5, 55.0)


def test_clients_that_evaluated_a_version_download_nothing_to_train_on_it(tmp_path) -> None:
    """The clock charges downloads as the channels do: evaluation also brings a client up to date."""
    config = five_clients(tmp_path, "sampling.per_round=5", "eval.federated_every=1", "eval.federated_clients=5",
                          'devices.bandwidth_down="constant:value=1000"', 'devices.table=""',
                          'devices.latency="constant:value=1"', 'transport.channel="direct"')
    second = run_simulation(config, show_progress=False).history[1]

    assert all(down == 0 for down, _ in second["bytes_by_client"].values())
    assert second["round_seconds_virtual"] == 1.0


def test_over_selection_needs_device_profiles(tmp_path) -> None:
    from fl.config import ConfigError

    with pytest.raises(ConfigError, match="over_select needs a \\[devices\\] table"):
        small_config(tmp_path, "sampling.over_select=1.5")
