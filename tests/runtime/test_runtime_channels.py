"""The gRPC channel (the default) against the direct channel: same parameters, compressed bytes counted."""

from __future__ import annotations

import torch

from fl.simulation import run_simulation
from tests.conftest import small_config

DIRECT = 'transport.channel="direct"'
GRPC = 'transport.channel="grpc"'


def run(tmp_path, *overrides):
    return run_simulation(small_config(tmp_path, *overrides), write=False, show_progress=False)


def test_grpc_and_direct_channels_give_bit_identical_parameters_with_a_lossless_codec(tmp_path):
    stateful = 'strategy.name="scaffold"'

    direct = run(tmp_path, DIRECT, stateful)
    over_grpc = run(tmp_path, GRPC, stateful)

    assert torch.equal(direct.global_params, over_grpc.global_params)


def test_grpc_on_ray_equals_direct_in_process(tmp_path, ray_session):
    direct = run(tmp_path, DIRECT)

    over_grpc_on_ray = run(tmp_path, GRPC, 'runtime.backend="ray"', "runtime.num_workers=2")

    assert torch.equal(direct.global_params, over_grpc_on_ray.global_params)


def test_a_stateful_lossy_codec_agrees_across_channels_and_shrinks_uplink_bytes(tmp_path):
    ef21 = 'transport.uplink="ef21(topk:ratio=0.05)"'
    plain = run(tmp_path, DIRECT)

    direct = run(tmp_path, DIRECT, ef21)
    over_grpc = run(tmp_path, GRPC, ef21)

    assert torch.equal(direct.global_params, over_grpc.global_params)
    assert not torch.equal(direct.global_params, plain.global_params)
    ratio = sum(m["bytes_up"] for m in plain.history) / sum(m["bytes_up"] for m in direct.history)
    assert 9.5 < ratio <= 10.0  # 5% of entries, each a 4-byte index and a 4-byte value: 10x fewer bytes


def test_client_state_riding_with_simulated_tasks_is_not_counted_as_traffic(tmp_path):
    ef = 'transport.uplink="ef(topk:ratio=0.01)"'  # the residual (a full-size tensor) rides in the client state

    direct = run(tmp_path, DIRECT, ef, "rounds=3", "sampling.per_round=12")
    over_grpc = run(tmp_path, GRPC, ef, "rounds=3", "sampling.per_round=12")

    for d, g in zip(direct.history, over_grpc.history):
        assert d["bytes_up"] < g["bytes_up"] < d["bytes_up"] + 12 * 512  # frame headers only
        assert d["bytes_down"] < g["bytes_down"] < d["bytes_down"] + 12 * 512
