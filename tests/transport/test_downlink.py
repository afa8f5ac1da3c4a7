"""Downlink compression: the server's mirror of what clients hold, chains of changes, and what each download costs."""

from __future__ import annotations

import pytest
import torch

from fl.compression import Downlink
from fl.grpc_channel import GrpcChannel
from fl.simulation import run_simulation
from tests.conftest import small_config
from tests.grpc_helpers import PayloadAdmission
from transport.codecs.registry import make_codec
from transport.downlink import DownloadLedger, Replica, catch_up, keep_cheaper_than
from transport.grpc_client import FederationClient


def drifting(num_versions: int, size: int = 2000) -> list[torch.Tensor]:
    """Global parameters of versions 1..num_versions that move a little each time."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(size, generator=generator)]
    for _ in range(num_versions - 1):
        params.append(params[-1] + 0.1 * torch.randn(size, generator=generator))
    return params


def test_a_lossless_downlink_hands_out_the_parameters_themselves():
    downlink = Downlink(make_codec("identity"))
    params = torch.randn(100)

    broadcast = downlink.broadcast(1, params, seed=0)

    assert broadcast.params is params and broadcast.change is None and broadcast.state == {}


def test_with_error_feedback_the_replica_catches_up_with_parameters_that_stop_moving():
    downlink = Downlink(make_codec("ef(topk:ratio=0.1)"))
    downlink.broadcast(1, torch.zeros(50), seed=0)
    target = torch.randn(50, generator=torch.Generator().manual_seed(1))

    distances = []
    for version in range(2, 42):
        broadcast = downlink.broadcast(version, target, seed=version)
        distances.append(float((broadcast.params - target).norm()))

    assert broadcast.change.nbytes() == 5 * 8  # five of fifty entries, index and value
    assert distances[-1] < 1e-6 < distances[0]


def test_a_chain_is_sent_only_when_every_change_is_kept_and_it_costs_less_than_the_whole():
    sizes = {3: 10, 4: 10, 5: 10}

    assert catch_up(2, 5, sizes, whole=100) == [3, 4, 5]
    assert catch_up(4, 5, sizes, whole=100) == [5]
    assert catch_up(1, 5, sizes, whole=100) is None  # the change to version 2 is gone
    assert catch_up(0, 5, sizes, whole=100) is None  # holds nothing
    assert catch_up(2, 5, sizes, whole=30) is None  # 30 bytes of changes cost as much as the whole


def test_the_server_keeps_no_more_changes_than_one_whole_download_is_worth():
    sizes = {v: 10 for v in range(1, 21)}

    keep_cheaper_than(sizes, whole=45)

    assert sorted(sizes) == [17, 18, 19, 20]


def test_the_ledger_charges_what_each_client_would_download():
    ledger = DownloadLedger()
    ledger.published(1, None, whole=100)
    assert ledger.charge(client_id=0, version=1, whole=100) == 100  # new: the whole replica
    for version in range(2, 6):
        ledger.published(version, 30, whole=100)

    assert ledger.charge(client_id=0, version=5, whole=100) == 100  # the chain 2..5 would cost 120
    assert ledger.charge(client_id=0, version=5, whole=100) == 0  # holds it already
    ledger.published(6, 30, whole=100)
    ledger.published(7, 30, whole=100)
    assert ledger.charge(client_id=0, version=7, whole=100) == 60


def test_a_replica_refuses_a_change_it_cannot_apply():
    replica = Replica(make_codec("topk:ratio=0.5"))
    replica.set_whole(1, torch.zeros(4), {})
    change, _ = make_codec("topk:ratio=0.5").encode(torch.ones(4), {})

    with pytest.raises(ValueError, match="needs version 2; this replica holds 1"):
        replica.apply_change(3, change)


@pytest.mark.parametrize("spec", ["ef(topk:ratio=0.01)", "ef21(topk:ratio=0.01+fp16)"])
def test_a_client_catches_up_over_grpc_to_the_bits_of_the_servers_mirror(spec):
    """Version 1 goes whole; a client that held version 2 gets the chain 3..5, a new one the whole replica (with
    EF21's receiver state, so that it can decode later changes); both then hold the mirror's exact bits."""
    downlink, channel = Downlink(make_codec(spec)), GrpcChannel(deployed=True)
    channel.admit_with(PayloadAdmission())
    behind, newcomer = Replica(make_codec(spec)), Replica(make_codec(spec))
    try:
        with FederationClient(channel.address, client_id=0) as client:
            client.join(0)  # a deployed server serves a client within its session
            for version, params in enumerate(drifting(6), start=1):
                channel.publish(version, downlink.broadcast(version, params, seed=version))
                channel.traffic.take()
                if version == 2:
                    client.update_replica(behind, 2)
                if version == 5:
                    caught_up = client.update_replica(behind, 5)
                    chain_bytes = channel.traffic.take()[0][0]
                    new_params = client.update_replica(newcomer, 5)
                    whole_bytes = channel.traffic.take()[0][0]
                    expected_chain = sum(len(f) for v in (3, 4, 5) for f in channel.board._changes[v])
                    assert torch.equal(caught_up, downlink.mirror.params)
                    assert torch.equal(new_params, downlink.mirror.params)
            client.update_replica(newcomer, 6)
            client.update_replica(behind, 6)
            channel.board.close()
            assert client.pull_task(0) == "done"  # the joined client hears the end, so the server stops at once
    finally:
        channel.close()

    assert chain_bytes == expected_chain < whole_bytes / 3
    assert behind.version == newcomer.version == 6
    assert torch.equal(newcomer.params, downlink.mirror.params) and torch.equal(behind.params, downlink.mirror.params)
    assert newcomer.state.keys() == downlink.mirror.state.keys()


def test_a_simulated_client_is_charged_one_change_when_it_holds_the_version_before(tmp_path):
    """Every client takes part in every round: after the first, each downloads exactly one change."""
    direct = ('transport.channel="direct"', "sampling.per_round=12")
    plain = run_simulation(small_config(tmp_path, *direct), write=False, show_progress=False)
    config = small_config(tmp_path, *direct, 'transport.downlink="topk:ratio=0.1"')

    compressed = run_simulation(config, write=False, show_progress=False)

    num_params = compressed.global_params.numel()
    first, *later = [m["bytes_down"] for m in compressed.history]
    assert first == plain.history[0]["bytes_down"] == 12 * 4 * num_params
    assert later == [12 * 8 * -(-num_params // 10)] * len(later)  # ceil(10 %) entries: int32 index + float32 value
    assert not torch.equal(plain.global_params, compressed.global_params)


def test_a_client_that_skipped_rounds_is_charged_the_changes_it_missed_or_the_whole(tmp_path):
    config = small_config(tmp_path, "rounds=6", 'transport.channel="direct"', 'transport.downlink="topk:ratio=0.1"')

    result = run_simulation(config, write=False, show_progress=False)

    whole, change = 4 * result.global_params.numel(), 8 * -(-result.global_params.numel() // 10)
    last_round: dict[int, int] = {}
    for round, metrics in enumerate(result.history, start=1):
        for client, (down, _up) in metrics["bytes_by_client"].items():
            held = last_round.get(int(client))
            expected = whole if held is None or (round - held) * change >= whole else (round - held) * change
            assert down == expected, (round, client, held)
            last_round[int(client)] = round
    assert any(m["bytes_down"] < 4 * whole for m in result.history[1:])  # some chains were cheaper


def test_grpc_simulation_charges_chains_of_serialized_changes(tmp_path):
    overrides = ("sampling.per_round=12", 'transport.downlink="topk:ratio=0.1"')
    direct = run_simulation(small_config(tmp_path, *overrides, 'transport.channel="direct"'), write=False,
                            show_progress=False)

    grpc = run_simulation(small_config(tmp_path, *overrides, 'transport.channel="grpc"'), write=False,
                          show_progress=False)

    assert torch.equal(direct.global_params, grpc.global_params)
    first, *later = [m["bytes_down"] for m in grpc.history]
    assert all(direct.history[1]["bytes_down"] < b < direct.history[1]["bytes_down"] * 1.1 for b in later)
    assert first > direct.history[0]["bytes_down"]  # the whole replica's frames carry headers too
