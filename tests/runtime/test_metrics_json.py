"""metrics.jsonl is strict JSON: a value that is not finite is written as null, named in its row, and said once;
`read_metrics` and `fl plot` take the nulls."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fl.cli import main
from fl.plot import plot_runs
from fl.run_dir import NON_FINITE, RunWriter, read_metrics


def strict_rows(path: Path) -> list[dict]:
    """The lines of a JSONL file, parsed by a parser that refuses NaN, Infinity and -Infinity."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_non_finite_values_are_written_as_null_and_named(tmp_path, capsys):
    # Prepare
    writer = RunWriter(tmp_path, "run", {"name": "run"})
    rows = [{"round": 1, "clients": 2, "train_loss": math.nan, "test_loss": math.inf, "test_accuracy": 0.5,
             "bytes_up": 1, "bytes_down": 1, "bytes_by_client": {"3": [1.0, -math.inf]}},
            {"round": 2, "clients": 2, "train_loss": 0.5, "test_loss": -math.inf, "bytes_up": 1, "bytes_down": 1},
            {"round": 3, "clients": 2, "train_loss": 0.25, "bytes_up": 1, "bytes_down": 1}]
    # Execute
    for row in rows:
        writer.write_round(row)
    writer.close()
    # Assert
    first, second, third = strict_rows(writer.path / "metrics.jsonl")
    assert (first["train_loss"], first["test_loss"], first["bytes_by_client"]) == (None, None, {"3": [1.0, None]})
    assert first[NON_FINITE] == ["train_loss", "test_loss", "bytes_by_client.3.1"]
    assert (second["test_loss"], second[NON_FINITE]) == (None, ["test_loss"])
    assert NON_FINITE not in third and third["train_loss"] == 0.25
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("fl: round 1: train_loss, test_loss, bytes_by_client.3.1 not finite")


def test_read_metrics_and_plot_take_nulls(tmp_path):
    run = tmp_path / "gossip"
    run.mkdir()
    row = {"round": 1, "clients": 4, "train_loss": None, "test_loss": None, "test_accuracy": None, "bytes_up": 8,
           "bytes_down": 8, "consensus_distance": None, "node_accuracy_mean": None, "node_accuracy_min": None,
           "node_accuracy_max": None, NON_FINITE: ["train_loss"]}
    finite = {**row, "round": 2, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": 0.5, "consensus_distance": 0.1,
              "node_accuracy_mean": 0.5, "node_accuracy_min": 0.4, "node_accuracy_max": 0.6}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(finite) + "\n")

    assert read_metrics(run)[0]["test_loss"] is None
    for x in ("round", "time", "bytes"):
        assert plot_runs([run], tmp_path / f"{x}.png", x).stat().st_size > 0


def test_a_server_lr_of_1e30_writes_strict_json(tmp_path, capsys):
    """The first round's step makes the model's test loss infinite or NaN: it is written as null."""
    args = ["run", "examples/quickstart.toml", "--quiet"]
    for override in (f'output_dir="{tmp_path}"', "rounds=1", "data.num_clients=10", "sampling.per_round=3",
                     "model.hidden=[16]", 'runtime.backend="local"', "strategy.server_lr=1e30"):
        args += ["--set", override]

    assert main(args) == 0, capsys.readouterr().err

    (row,) = strict_rows(tmp_path / "quickstart" / "metrics.jsonl")
    assert row["test_loss"] is None and "test_loss" in row[NON_FINITE]
    assert "metrics.jsonl holds null" in capsys.readouterr().err
