"""`fl plot`: accuracy and loss per round for one or more runs, overlaid, as a PNG; and a run's staleness histogram."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fl.run_dir import read_metrics  # noqa: E402


AXES = {"round": "round", "time": "virtual time (s)", "bytes": "bytes moved (up + down, cumulative)"}


def x_values(history: list[dict], x: str) -> list[float]:
    """Each row's position on the x axis: its round, its virtual time, or the bytes moved up to and including it."""
    if x == "round":
        return [m["round"] for m in history]
    if x == "time":
        return [m.get("virtual_time", 0.0) for m in history]
    if x == "bytes":
        moved = [m["bytes_up"] + m["bytes_down"] + m.get("fed_eval_bytes_up", 0) + m.get("fed_eval_bytes_down", 0)
                 for m in history]
        return [sum(moved[: i + 1]) for i in range(len(moved))]
    raise ValueError(f"x = {x!r} is not one of: {', '.join(AXES)}")


def plot_runs(runs: list[str | Path], out: str | Path, x: str = "round") -> Path:
    """Draw test accuracy and losses of every run against the round, the virtual time or the bytes moved; returns
    the PNG path."""
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        history = read_metrics(run)
        label = Path(run).name
        where = dict(zip((m["round"] for m in history), x_values(history, x)))
        evaluated = [m for m in history if "test_accuracy" in m]
        line = accuracy_axes.plot([where[m["round"]] for m in evaluated], [m["test_accuracy"] for m in evaluated],
                                  marker=".", label=label)[0]
        train = [math.nan if m["train_loss"] is None else m["train_loss"] for m in history]  # None: an empty round
        loss_axes.plot([where[m["round"]] for m in history], train, color=line.get_color(), label=f"{label} train")
        loss_axes.plot([where[m["round"]] for m in evaluated], [m["test_loss"] for m in evaluated],
                       color=line.get_color(), linestyle="--", label=f"{label} test")
    accuracy_axes.set(xlabel=AXES[x], ylabel="test accuracy", title="Accuracy")
    loss_axes.set(xlabel=AXES[x], ylabel="cross-entropy", title="Loss")
    for axes in (accuracy_axes, loss_axes):
        if x == "round":
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


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
