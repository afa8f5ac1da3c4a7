"""`fl plot`: accuracy and loss per round for one or more runs, overlaid, as a PNG; and a run's staleness histogram.

A decentralized (gossip) run, one whose rows hold `consensus_distance`, gets two more panels: its nodes' own
accuracies (the mean, with a band from the worst to the best node) and the consensus distance on a log scale; against
bytes, each of its messages counts once (its rows report every message both as sent and as received).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fl.run_dir import read_metrics  # noqa: E402


AXES = {"round": "round", "time": "virtual time (s)", "bytes": "bytes moved (up + down, cumulative)"}


def values(rows: list[dict], key: str) -> list[float]:
    """Each row's `key`, with NaN for null (an empty round's loss, or a value that was not finite)."""
    return [math.nan if m[key] is None else m[key] for m in rows]


def x_values(history: list[dict], x: str) -> list[float]:
    """Each row's position on the x axis: its round, its virtual time, or the bytes moved up to and including it."""
    if x == "round":
        return [m["round"] for m in history]
    if x == "time":
        return [m.get("virtual_time", 0.0) for m in history]
    if x == "bytes":
        moved = [_moved(m) for m in history]
        return [sum(moved[: i + 1]) for i in range(len(moved))]
    raise ValueError(f"x = {x!r} is not one of: {', '.join(AXES)}")


def _moved(row: dict) -> int:
    """The bytes a row's round moved. A gossip row reports every message as sent (up) and as received (down): it
    counts once."""
    if "consensus_distance" in row:
        return row["bytes_up"]
    return row["bytes_up"] + row["bytes_down"] + row.get("fed_eval_bytes_up", 0) + row.get("fed_eval_bytes_down", 0)


def is_gossip(history: list[dict]) -> bool:
    """Whether the rows are a decentralized run's: they report the nodes' consensus distance."""
    return any("consensus_distance" in m for m in history)


def plot_runs(runs: list[str | Path], out: str | Path, x: str = "round") -> Path:
    """Draw test accuracy and losses of every run against the round, the virtual time or the bytes moved; when a run
    is decentralized, also its node accuracies (mean and min-max band) and consensus distance. Returns the PNG path."""
    figure = runs_figure(runs, x)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def runs_figure(runs: list[str | Path], x: str = "round") -> Figure:
    """The figure `plot_runs` saves: accuracy and loss panels, and for gossip runs node accuracy and consensus."""
    histories = [(Path(run).name, read_metrics(run)) for run in runs]
    gossip = any(is_gossip(history) for _, history in histories)
    if gossip:
        figure, grid = plt.subplots(2, 2, figsize=(11, 8))
        (accuracy_axes, node_axes), (loss_axes, consensus_axes) = grid
        panels = [accuracy_axes, node_axes, loss_axes, consensus_axes]
    else:
        figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(11, 4))
        panels = [accuracy_axes, loss_axes]
    for label, history in histories:
        where = dict(zip((m["round"] for m in history), x_values(history, x)))
        evaluated = [m for m in history if "test_accuracy" in m]
        line = accuracy_axes.plot([where[m["round"]] for m in evaluated], values(evaluated, "test_accuracy"),
                                  marker=".", label=label)[0]
        color = line.get_color()
        loss_axes.plot([where[m["round"]] for m in history], values(history, "train_loss"), color=color,
                       label=f"{label} train")
        loss_axes.plot([where[m["round"]] for m in evaluated], values(evaluated, "test_loss"),
                       color=color, linestyle="--", label=f"{label} test")
        if is_gossip(history):
            _draw_nodes(node_axes, [m for m in evaluated if "node_accuracy_mean" in m], where, label, color)
            _draw_consensus(consensus_axes, history, where, label, color)
    accuracy_axes.set(xlabel=AXES[x], ylabel="test accuracy", title="Accuracy (gossip: averaged model)" if gossip
                      else "Accuracy")
    loss_axes.set(xlabel=AXES[x], ylabel="cross-entropy", title="Loss (gossip: test of the averaged model)" if gossip
                  else "Loss")
    if gossip:
        node_axes.set(xlabel=AXES[x], ylabel="test accuracy", title="Node models: mean, min-max band")
        consensus_axes.set(xlabel=AXES[x], ylabel="mean squared distance to the average", title="Consensus distance")
        node_axes.sharey(accuracy_axes)
    for axes in panels:
        if x == "round":
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _draw_nodes(axes, rows: list[dict], where: dict, label: str, color: str) -> None:
    """The mean of the node models' accuracies, and a band from the worst node's to the best node's."""
    xs = [where[m["round"]] for m in rows]
    axes.plot(xs, values(rows, "node_accuracy_mean"), color=color, marker=".", label=f"{label} mean")
    axes.fill_between(xs, values(rows, "node_accuracy_min"), values(rows, "node_accuracy_max"),
                      color=color, alpha=0.15, linewidth=0)


def _draw_consensus(axes, history: list[dict], where: dict, label: str, color: str) -> None:
    """The consensus distance on a log scale; exact zeros (every node holds the same model) cannot be drawn there
    and are left out, which the legend says (as are nulls: distances that were not finite)."""
    rows = [m for m in history if "consensus_distance" in m]
    distances = values(rows, "consensus_distance")
    zeros = sum(d == 0 for d in distances)
    note = "" if not zeros else " (0 in every round)" if zeros == len(distances) else f" (0 in {zeros} rounds)"
    axes.plot([where[m["round"]] for m in rows], [d if d > 0 else math.nan for d in distances], color=color,
              marker=".", label=f"{label}{note}")
    axes.set_yscale("log")


def plot_staleness(counts: dict[int, int], out: str | Path) -> Path:
    """A bar chart of how many applied updates had each staleness (versions published while they trained)."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.bar(list(counts), list(counts.values()), width=0.8)
    axes.set(xlabel="staleness (versions)", ylabel="updates applied", title="Staleness of applied updates")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
