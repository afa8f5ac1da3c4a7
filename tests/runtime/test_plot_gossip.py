"""`fl plot` on decentralized runs: node accuracies with a min-max band and the consensus distance on a log scale,
next to the accuracy and loss panels every run gets."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import PolyCollection

from fl.cli import main
from fl.plot import plot_runs, runs_figure, x_values
from fl.simulation import run_simulation
from tests.conftest import small_config

GOSSIP = ('strategy.name="dpsgd"', "data.num_clients=8", "client.steps=4", "rounds=3")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Short D-PSGD runs on a ring and on the complete graph (whose nodes agree exactly), and a FedAvg run."""
    folder = tmp_path_factory.mktemp("gossip_plot")
    ring = run_simulation(small_config(folder, *GOSSIP, 'name="ring"'), show_progress=False).run_dir
    complete = run_simulation(small_config(folder, *GOSSIP, 'name="complete"', 'topology.name="complete"'),
                              show_progress=False).run_dir
    fedavg = run_simulation(small_config(folder, 'name="fedavg"', 'transport.channel="direct"'),
                            show_progress=False).run_dir
    return ring, complete, fedavg


def panels(figure) -> dict[str, plt.Axes]:
    return {axes.get_title(): axes for axes in figure.axes}


def test_gossip_runs_get_node_accuracy_and_consensus_panels(runs) -> None:
    ring, complete, _ = runs

    figure = runs_figure([ring, complete])

    axes = panels(figure)
    assert set(axes) == {"Accuracy (gossip: averaged model)", "Loss (gossip: test of the averaged model)",
                         "Node models: mean, min-max band", "Consensus distance"}
    nodes, consensus = axes["Node models: mean, min-max band"], axes["Consensus distance"]
    assert [line.get_label() for line in nodes.get_lines()] == ["ring mean", "complete mean"]
    assert len([c for c in nodes.collections if isinstance(c, PolyCollection)]) == 2  # one min-max band per run
    assert consensus.get_yscale() == "log"
    ring_line, complete_line = consensus.get_lines()
    assert ring_line.get_label() == "ring" and (ring_line.get_ydata() > 0).all()
    assert complete_line.get_label() == "complete (0 in every round)"  # log scale: exact zeros are left out
    plt.close(figure)


def test_other_runs_keep_the_two_panels_and_mix_with_gossip_runs(runs) -> None:
    ring, _, fedavg = runs

    alone, mixed = runs_figure([fedavg]), runs_figure([fedavg, ring])

    assert [axes.get_title() for axes in alone.axes] == ["Accuracy", "Loss"]
    mixed_panels = panels(mixed)
    assert len(mixed_panels) == 4
    assert [line.get_label() for line in mixed_panels["Accuracy (gossip: averaged model)"].get_lines()] == [
        "fedavg", "ring"]
    assert [line.get_label() for line in mixed_panels["Consensus distance"].get_lines()] == ["ring"]
    plt.close(alone)
    plt.close(mixed)


def test_fl_plot_writes_a_png_of_gossip_runs_against_rounds_or_bytes(runs, tmp_path) -> None:
    ring, complete, _ = runs

    for x in ("round", "bytes"):
        assert main(["plot", str(ring), str(complete), "--x", x, "--out", str(tmp_path / f"{x}.png")]) == 0
        assert (tmp_path / f"{x}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_runs([ring], tmp_path / "one.png").stat().st_size > 10_000


def test_a_gossip_message_counts_once_on_the_bytes_axis() -> None:
    # A gossip row reports every message as sent (up) and as received (down).
    history = [{"round": 1, "bytes_up": 100, "bytes_down": 100, "consensus_distance": 0.5},
               {"round": 2, "bytes_up": 100, "bytes_down": 100, "consensus_distance": 0.25}]

    assert x_values(history, "bytes") == [100, 200]
