"""The example programs run end to end with tiny settings, and the plug-in's clipping is right by hand."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
import torch

from strategies.base import Federation, Reply
from strategies.registry import STRATEGIES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look up their module while the class is built
    spec.loader.exec_module(module)
    return module


def run_quick(name: str, out) -> tuple[object, str]:
    """examples/NAME.py's main with --quick into `out`: (what main returns, what it printed)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        returned = load_example(name).main(["--quick", "--out", str(out)])
    return returned, printed.getvalue()


@pytest.fixture
def registry():
    """The global strategy registry, restored afterwards (other tests check exactly what it holds)."""
    with mock.patch.dict(STRATEGIES):
        yield STRATEGIES


def test_simulation_script_compares_fedavg_and_fedadam_and_plots_both(tmp_path, capsys) -> None:
    results = load_example("simulation_script").main(["--rounds", "2", "--backend", "local", "--out", str(tmp_path)])

    assert list(results) == ["fedavg", "fedadam"]
    assert all(len(r.history) == 2 and (r.run_dir / "metrics.jsonl").exists() for r in results.values())
    assert results["fedavg"].history[0]["bytes_up"] == results["fedadam"].history[0]["bytes_up"]  # same clients
    assert (tmp_path / "fedavg_vs_fedadam.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "fedavg" in table and "fedadam" in table and "best accuracy" in table


def test_clipped_fedavg_clips_the_large_update_and_leaves_the_small_one_and_buffers() -> None:
    example = load_example("custom_strategy")
    # 2 trainable entries, then 1 buffer. Client 0's update has norm 5 -> scaled to norm 1: (0.6, 0.8), buffer kept.
    strategy = example.ClippedFedAvgConfig(max_norm=1.0).build(Federation(2, 2, num_params=3, num_trainable=2))
    replies = [Reply(0, torch.tensor([3.0, 4.0, 10.0]), 1, {}), Reply(1, torch.tensor([0.3, 0.4, 2.0]), 3, {})]

    new_global, metrics = strategy.aggregate(1, torch.zeros(3), iter(replies))

    # sample-weighted: (1 * (0.6, 0.8, 10) + 3 * (0.3, 0.4, 2)) / 4
    torch.testing.assert_close(new_global, torch.tensor([0.375, 0.5, 4.0]))
    assert metrics == {"clipped_fraction": 0.5, "max_update_norm": pytest.approx(5.0)}


def test_custom_strategy_registers_once_and_runs(registry, tmp_path, capsys) -> None:
    example = load_example("custom_strategy")
    argv = ["--rounds", "2", "--backend", "local", "--out", str(tmp_path), "--max-norm", "0.1"]

    first, second = example.main(argv), example.main(argv)  # a second main() must not register again

    assert registry[example.NAME] is example.ClippedFedAvgConfig
    assert [m["test_accuracy"] for m in first.history] == [m["test_accuracy"] for m in second.history]
    assert all(m["clipped_fraction"] > 0 for m in first.history)
    assert "final accuracy" in capsys.readouterr().out


def test_custom_strategy_runs_on_ray(registry, ray_session, tmp_path) -> None:
    example = load_example("custom_strategy")
    # A script's own classes live in __main__, which cloudpickle sends by value; do the same for this import.
    ray_session.cloudpickle.register_pickle_by_value(example)

    result = example.main(["--rounds", "1", "--backend", "ray", "--out", str(tmp_path)])

    assert len(result.history) == 1 and 0 <= result.history[0]["test_accuracy"] <= 1
