"""What a run leaves behind: run directory, metrics, model, plot; and what the server refuses."""

from __future__ import annotations

import json

import torch

from fl.config import load_config
from fl.plot import plot_runs
from fl.run_dir import read_metrics
from fl.simulation import run_simulation
from tests.conftest import small_config


def test_run_directory_holds_config_metrics_and_model_that_reload(tmp_path):
    config = small_config(tmp_path, 'name="outputs"', "eval.federated_every=1", "eval.federated_clients=3")

    result = run_simulation(config, show_progress=False)

    assert result.run_dir == tmp_path / "outputs"
    history = read_metrics(result.run_dir)
    assert [m["round"] for m in history] == [1, 2, 3]
    for line in history:
        assert {"train_loss", "test_accuracy", "clients", "bytes_up", "bytes_down", "wall_seconds"} <= set(line)
        payload = 4 * result.spec.num_params * 4  # 4 clients, float32 updates
        assert payload < line["bytes_up"] < payload + 4 * 512  # gRPC frames: the payload plus small headers
        per_client = line["bytes_by_client"]  # client id -> [down, up]
        assert len(per_client) == 4 and sum(up for _, up in per_client.values()) == line["bytes_up"]
        assert sum(down for down, _ in per_client.values()) == line["bytes_down"]
        assert 0.0 <= line["fed_test_accuracy"] <= 1.0
        assert line["fed_eval_bytes_down"] > 3 * 4 * result.spec.num_params  # 3 evaluators fetch the new model
    reloaded = load_config(result.run_dir / "config.toml")
    assert reloaded == config
    saved = torch.load(result.run_dir / "model.pt")
    assert torch.equal(saved["params"], result.global_params)


def test_a_second_run_with_the_same_name_does_not_overwrite_the_first(tmp_path):
    first = run_simulation(small_config(tmp_path, "rounds=1"), show_progress=False)

    second = run_simulation(small_config(tmp_path, "rounds=1"), show_progress=False)

    assert first.run_dir != second.run_dir
    assert (first.run_dir / "metrics.jsonl").exists() and (second.run_dir / "metrics.jsonl").exists()


def test_plot_writes_a_png_of_several_runs(tmp_path):
    runs = [run_simulation(small_config(tmp_path, f'name="r{i}"', f"seed={i}"), show_progress=False).run_dir
            for i in range(2)]

    out = plot_runs(runs, tmp_path / "curves.png")

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_evaluation_every_two_rounds_still_evaluates_the_last_round(tmp_path):
    result = run_simulation(small_config(tmp_path, "eval.every=2"), write=False, show_progress=False)

    assert ["test_accuracy" in m for m in result.history] == [False, True, True]


def test_metrics_lines_are_plain_json(tmp_path):
    result = run_simulation(small_config(tmp_path, "rounds=1"), show_progress=False)

    line = (result.run_dir / "metrics.jsonl").read_text().splitlines()[0]

    assert json.loads(line)["round"] == 1


def test_direct_channel_counts_exactly_the_payload_bytes(tmp_path):
    result = run_simulation(small_config(tmp_path, 'transport.channel="direct"'), write=False, show_progress=False)

    assert all(m["bytes_up"] == 4 * result.spec.num_params * 4 for m in result.history)
    assert all(m["bytes_down"] == 4 * result.spec.num_params * 4 for m in result.history)
