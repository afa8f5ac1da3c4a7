"""Live progress on the terminal: a bar per round, and a summary table at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class RoundProgress:
    def __init__(self, rounds: int, title: str, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("acc {task.fields[accuracy]}  loss {task.fields[loss]}  clients {task.fields[clients]}"
                       "  virtual {task.fields[virtual]}"),
            TimeElapsedColumn(), console=self.console,
        )
        self.task = self.progress.add_task(title, total=rounds, accuracy="-", loss="-", clients="-", virtual="-")

    def __enter__(self) -> "RoundProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, metrics: dict[str, Any]) -> None:
        accuracy = metrics.get("test_accuracy")
        self.progress.update(
            self.task, advance=1, clients=metrics["clients"], loss=_number(metrics["train_loss"]),
            accuracy=_number(accuracy), virtual=_duration(metrics.get("virtual_time", 0.0)),
        )
        if accuracy is not None:
            self.progress.console.print(
                f"round {metrics['round']:>4}  accuracy {accuracy:.4f}  test loss {metrics['test_loss']:.4f}"
            )


def summary_table(history: list[dict[str, Any]], run_dir: Path | None, wall_seconds: float) -> Table:
    accuracies = [m["test_accuracy"] for m in history if "test_accuracy" in m]
    table = Table(title="Run summary", show_header=False)
    rows = [
        ("rounds", str(len(history))),
        ("final accuracy", f"{accuracies[-1]:.4f}" if accuracies else "-"),
        ("best accuracy", f"{max(accuracies):.4f}" if accuracies else "-"),
        ("final train loss", _number(history[-1]["train_loss"]) if history else "-"),
        ("virtual time", _duration(history[-1].get("virtual_time", 0.0)) if history else "-"),
        ("bytes up", f"{sum(m['bytes_up'] for m in history):,}"),
        ("bytes down", f"{sum(m['bytes_down'] for m in history):,}"),
        ("wall seconds", f"{wall_seconds:.1f}"),
        ("run directory", str(run_dir) if run_dir else "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _duration(seconds: float) -> str:
    """Virtual seconds as the display shows them ("-" while the clock stands at 0: no device profiles)."""
    if not seconds:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
