"""The round as dispatch / collect / commit: a round that fails writes nothing (parameters, client and decoder state,
the clock, its events and ledger, traffic), and `fl plot` draws against rounds, virtual time or bytes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import pytest
import torch
from torch import Tensor

from fl.cli import main
from fl.plot import x_values
from fl.pool import LocalPool
from fl.scenario import build_data, build_model_fn
from fl.server import Server
from fl.simulation import run_simulation, server_setup
from fl.worker import Worker
from strategies.base import Federation, Reply
from strategies.fedavg import FedAvg, FedAvgConfig
from tests.conftest import small_config
from transport.inprocess import InProcessChannel


@dataclass
class FailsInRoundTwoConfig:
    def build(self, federation: Federation) -> "FailsInRoundTwo":
        return FailsInRoundTwo(federation, FedAvgConfig())


class FailsInRoundTwo(FedAvg):
    """FedAvg that reads every reply of round 2, then fails."""

    def aggregate(self, round: int, global_params: Tensor, replies: Iterable[Reply]) -> tuple[Tensor, dict]:
        if round == 2:
            list(replies)
            raise RuntimeError("the strategy failed")
        return super().aggregate(round, global_params, replies)


def test_a_round_that_fails_leaves_parameters_client_state_and_decoder_state_as_they_were(tmp_path) -> None:
    config = small_config(tmp_path, 'transport.uplink="ef21(topk:ratio=0.1)"', 'transport.channel="direct"')
    data = build_data(config.data, config.seed)
    setup = dataclasses.replace(server_setup(config, data, build_model_fn(config.model, data)),
                                strategy=FailsInRoundTwoConfig(), per_round=12)
    server = Server(setup, InProcessChannel, lambda worker_setup, endpoint: LocalPool(Worker(worker_setup, endpoint)))
    server.run_round(1)
    before = (server.global_params.clone(), {c: dict(s) for c, s in server.store._states.items()},
              {c: dict(s) for c, s in server.decoder.states.items()})
    clock = (server.timing.now, list(server.events), dict(server.timing.downloads.held))

    with pytest.raises(RuntimeError, match="the strategy failed"):
        server.run_round(2)

    assert torch.equal(server.global_params, before[0]) and server.decoder.staged == {}
    assert (server.timing.now, server.events, server.timing.downloads.held) == clock
    assert server.channel.traffic.take() == ({}, {})
    for now, then in ((server.store._states, before[1]), (server.decoder.states, before[2])):
        assert now.keys() == then.keys() == set(range(12))
        assert all(torch.equal(now[c][k], then[c][k]) for c in then for k in then[c])


def test_x_values_are_rounds_virtual_seconds_or_cumulative_bytes() -> None:
    history = [{"round": 1, "virtual_time": 2.5, "bytes_up": 10, "bytes_down": 5},
               {"round": 2, "virtual_time": 4.0, "bytes_up": 1, "bytes_down": 2, "fed_eval_bytes_down": 3}]

    assert x_values(history, "round") == [1, 2]
    assert x_values(history, "time") == [2.5, 4.0]
    assert x_values(history, "bytes") == [15, 21]
    with pytest.raises(ValueError, match="one of"):
        x_values(history, "watts")


@pytest.mark.parametrize("x", ["time", "bytes"])
def test_fl_plot_draws_against_virtual_time_or_bytes(tmp_path, x: str) -> None:
    config = small_config(tmp_path, 'devices.compute="uniform:low=0.001,high=0.01"', "rounds=2")
    run = run_simulation(config, show_progress=False).run_dir

    assert main(["plot", str(run), "--x", x, "--out", str(tmp_path / f"{x}.png")]) == 0
    assert (tmp_path / f"{x}.png").stat().st_size > 10_000


def test_the_decoder_commits_only_the_states_of_results_its_round_collected() -> None:
    from fl.compression import UplinkDecoder
    from transport.codecs.registry import make_codec

    decoder = UplinkDecoder(make_codec("ef21(topk:ratio=0.5)"), 4, (torch.float32,))
    decoder.stage(1, {"h": torch.ones(4)})
    decoder.stage(2, {"h": torch.zeros(4)})  # admitted after its round had failed
    decoder.commit([1])

    assert list(decoder.states) == [1] and decoder.staged == {}
