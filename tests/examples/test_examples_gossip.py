"""examples/gossip_topologies.py runs end to end with --quick: it writes the plot, the run directories and the table,
and sparser graphs leave the nodes further from consensus."""

from __future__ import annotations

import re

import pytest

from tests.examples.test_examples import run_quick


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The example's main with --quick into a fresh folder: (summaries, printed output, folder)."""
    out = tmp_path_factory.mktemp("gossip")
    summaries, printed = run_quick("gossip_topologies", out)
    return summaries, printed, out


def test_writes_the_plot_and_one_run_directory_per_graph(quick_run) -> None:
    summaries, printed, out = quick_run

    assert list(summaries) == ["ring", "exponential", "complete"]
    png = out / "gossip_topologies.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert f"consensus distance and accuracy per round: {png}" in printed
    for name, summary in summaries.items():
        (run_dir,) = summary.run_dirs  # --quick: the first seed only
        assert run_dir == out / f"{name}-s0" and (run_dir / "metrics.jsonl").stat().st_size > 0
        assert [m["round"] for m in summary.histories[0]] == list(range(1, 9))  # --quick: 8 rounds


def test_the_table_has_a_row_per_graph_that_matches_the_runs(quick_run) -> None:
    summaries, printed, _ = quick_run

    for name, summary in summaries.items():
        row = re.search(rf"^{name}\s+(.*)$", printed, re.MULTILINE).group(1).split()
        gap, sent, averaged, node_mean, node_min, distance = map(float, row)
        last = summary.histories[0][-1]
        assert gap == pytest.approx(summary.spectral_gap, abs=5e-5)
        assert averaged == pytest.approx(last["test_accuracy"], abs=5e-5)
        assert node_mean == pytest.approx(last["node_accuracy_mean"], abs=5e-5)
        assert node_min == pytest.approx(last["node_accuracy_min"], abs=5e-5)
        assert distance == pytest.approx(last["consensus_distance"], rel=1e-3, abs=1e-12)
    # Models sent per node and round: 2 ring neighbours, 5 exponential peers (32 nodes), 31 on the complete graph.
    assert [summary.messages_per_node for summary in summaries.values()] == [2, 5, 31]


def test_sparser_graphs_are_further_from_consensus(quick_run) -> None:
    summaries, _, _ = quick_run
    ring, exponential, complete = (summaries[name].last("consensus_distance") for name in summaries)

    assert ring > exponential > complete
    assert complete < 1e-10  # the complete graph averages exactly: every node holds the same model
    assert summaries["ring"].spectral_gap < summaries["exponential"].spectral_gap < 1.0
    assert summaries["complete"].spectral_gap == pytest.approx(1.0)
