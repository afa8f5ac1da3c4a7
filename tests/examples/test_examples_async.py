"""examples/async_vs_sync.py runs end to end with --quick: it writes the plot and the tables, and their figures are the
run directories' metrics."""

from __future__ import annotations

import json

import pytest

from fl.run_dir import read_metrics
from tests.examples.test_examples import run_quick

STRATEGIES = ["fedavg", "fedasync", "fedbuff", "fedfix", "async_fedavg", "fedcompass"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The example's main with --quick into a fresh folder: (table rows, printed output, folder)."""
    out = tmp_path_factory.mktemp("async")
    rows, printed = run_quick("async_vs_sync", out)
    return rows, printed, out


def test_writes_the_plot_and_the_tables(quick_run) -> None:
    rows, printed, out = quick_run

    assert [(r["strategy"], r["seed"]) for r in rows] == [(s, seed) for s in STRATEGIES for seed in (0, 1)]
    png = out / "async_vs_sync.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"accuracy against virtual time: {png}" in printed
    written = json.loads((out / "async_vs_sync.json").read_text())
    assert written["runs"] == rows
    assert (written["budget"], written["target"]) == (5.0, 0.3)  # --quick
    markdown = (out / "async_vs_sync.md").read_text()
    assert markdown in printed
    assert markdown.splitlines()[0] == "| strategy | seed | accuracy at 5 s | time to 0.3 (s) | versions | updates |"
    assert len(markdown.splitlines()) == 2 + len(rows)


def test_the_table_holds_each_runs_figures_within_the_budget(quick_run) -> None:
    rows, _, out = quick_run

    for row in rows:
        history = read_metrics(out / f"{row['strategy']}-s{row['seed']}")
        evaluated = [(m["virtual_time"], m["test_accuracy"]) for m in history if "test_accuracy" in m]
        in_budget = [(time, accuracy) for time, accuracy in evaluated if time <= 5.0]
        assert history[-1]["virtual_time"] >= 5.0  # every run went on until the clock reached the budget
        assert row["versions"] == len(history) and row["updates"] == sum(m["clients"] for m in history)
        assert row["final_accuracy"] == in_budget[-1][1]
        reached = [time for time, accuracy in in_budget if accuracy >= 0.3]
        assert row["time_to_target"] == (reached[0] if reached else None)
        line = f"| {row['strategy']} | {row['seed']} | {row['final_accuracy']:.4f} |"
        assert line in (out / "async_vs_sync.md").read_text()
    # The synchronous runs publish one version a round; the asynchronous ones more, in the same virtual time
    versions = {(r["strategy"], r["seed"]): r["versions"] for r in rows}
    for seed in (0, 1):
        assert versions[("fedasync", seed)] > versions[("fedavg", seed)]
