"""Device heterogeneity on the virtual clock: FedAvg waiting for every client, with a deadline, and over-selecting.

Synthetic(1,1), 100 clients, 10 per round, the MLP, 10 local steps of 32 samples per task, and heterogeneous devices:
seconds per sample from a lognormal with a long tail (median 2 ms), bandwidths uniform in 1-10 MB/s up and 2-20 MB/s
down, 50-500 ms of latency, and 5% of tasks failing. FedAvg runs three ways on the same seed (the same data, devices
and clients drawn each round), in-process:

  sync         every round waits for every selected client whose task does not fail;
  deadline     a round waits at most `sampling.deadline` virtual seconds, set to the 80th percentile of the sync
               run's task times, so about one task in five misses it and its update is left out;
  over-select  `sampling.over_select = 1.3`: 13 clients start, the first 10 to arrive are kept.

Prints, per run, the final accuracy, the accuracy at the virtual time the quickest run ended, the total virtual time,
the mean round length and how many tasks failed (dropped) or missed the round (late), and draws test accuracy and loss
against virtual time for the three runs into <out>/device_heterogeneity.png (the run directories are <out>/sync,
<out>/deadline and <out>/over-select, or -2, -3, ... when those exist).

With fixed local steps a task's length depends on the device, not on the client's data. With `--set client.steps=0`
(one epoch over each client's data) the task time grows with the data too: the deadline and over-selection then
mostly leave out the clients with the most data, which also dominate the test set, and their accuracy falls well
below the sync run's (0.19 and 0.27 against 0.50 after 40 rounds).

Run:  python examples/device_heterogeneity.py [--rounds 40] [--out runs] [--quick] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fl import load_config, run_simulation
from fl.plot import plot_runs
from fl.simulation import SimulationResult

QUICKSTART = Path(__file__).with_name("quickstart.toml")

DEVICES = [
    'devices.compute="lognormal:median=0.002,sigma=1.0"',  # seconds per training sample
    'devices.bandwidth_up="uniform:low=1e6,high=10e6"',  # bytes per second
    'devices.bandwidth_down="uniform:low=2e6,high=20e6"',
    'devices.latency="uniform:low=0.05,high=0.5"',  # seconds per task
    'devices.dropout="constant:value=0.05"',  # a task fails with this probability
]
DEADLINE_PERCENTILE = 80  # of the sync run's task times
OVER_SELECT = 1.3  # 13 clients start, 10 are kept
# Every client takes 10 local steps of 32 samples, so a task's time depends on its device and not on how much data
# the client holds (with `--set client.steps=0`, one epoch each, the slow clients are the data-rich ones).
TRAINING = ["client.steps=10"]


@dataclass
class Summary:
    """The figures of one run that the table prints."""

    final_accuracy: float
    virtual_seconds: float  # the virtual clock at the end of the last round
    mean_round_seconds: float
    dropped: int  # tasks that failed
    late: int  # tasks that arrived after the deadline or after the round had its clients
    history: list[dict]  # the run's metrics rows
    run_dir: Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", default="runs", help="parent folder of the run directories and the plot")
    parser.add_argument("--quick", action="store_true", help="4 rounds, no progress display: a smoke test")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for all three runs, e.g. --set seed=1 (repeatable)")
    return parser.parse_args(argv)


def run(name: str, options: list[str], args: argparse.Namespace) -> SimulationResult:
    """The quickstart with heterogeneous devices and `options`, in-process, written to <out>/<name> (or -2, ...)."""
    config = load_config(QUICKSTART, [f"name={name}", f"rounds={args.rounds}", "runtime.backend=local",
                                      "transport.channel=direct", *DEVICES, *TRAINING, *args.set, *options])
    config.output_dir = str(args.out)  # a path, set directly rather than written as a TOML value
    return run_simulation(config, show_progress=not args.quick)


def task_seconds(result: SimulationResult) -> np.ndarray:
    """How long each task that arrived took: its arrival minus its round's start (the previous round's end)."""
    starts = [0.0] + [m["virtual_time"] for m in result.history[:-1]]
    return np.array([time - starts[round - 1] for round, time, kind, _ in result.events if kind == "arrive"])


def summarize(result: SimulationResult) -> Summary:
    history = result.history
    return Summary(
        final_accuracy=history[-1]["test_accuracy"],
        virtual_seconds=history[-1]["virtual_time"],
        mean_round_seconds=float(np.mean([m["round_seconds_virtual"] for m in history])),
        dropped=sum(m["dropped"] for m in history),
        late=sum(m["late"] for m in history),
        history=history,
        run_dir=result.run_dir,
    )


def accuracy_at(history: list[dict], seconds: float) -> float:
    """The test accuracy of the last evaluation at or before `seconds` of virtual time (nan if none)."""
    evaluated = [m["test_accuracy"] for m in history if "test_accuracy" in m and m["virtual_time"] <= seconds]
    return evaluated[-1] if evaluated else float("nan")


def table(summaries: dict[str, Summary]) -> str:
    """One line per run; `at T s` is each run's accuracy when the quickest run ended, T virtual seconds in."""
    budget = min(s.virtual_seconds for s in summaries.values())
    at = f"at {budget:.0f} s"
    lines = [f"{'run':<13}{'final accuracy':>16}{at:>10}{'virtual time (s)':>18}{'mean round (s)':>16}"
             f"{'dropped':>9}{'late':>6}"]
    for name, s in summaries.items():
        lines.append(f"{name:<13}{s.final_accuracy:>16.4f}{accuracy_at(s.history, budget):>10.4f}"
                     f"{s.virtual_seconds:>18.1f}{s.mean_round_seconds:>16.2f}{s.dropped:>9}{s.late:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Summary]:
    """Run the three variants, print the table, plot accuracy against virtual time; returns the summaries by run."""
    args = parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 4)
    results = {"sync": run("sync", [], args)}
    deadline = float(np.percentile(task_seconds(results["sync"]), DEADLINE_PERCENTILE))
    results["deadline"] = run("deadline", [f"sampling.deadline={deadline!r}"], args)
    results["over-select"] = run("over-select", [f"sampling.over_select={OVER_SELECT}"], args)
    summaries = {name: summarize(result) for name, result in results.items()}
    print(f"deadline: {deadline:.2f} virtual seconds (the {DEADLINE_PERCENTILE}th percentile of the sync run's "
          f"task times)")
    print(table(summaries))
    png = plot_runs([result.run_dir for result in results.values()], Path(args.out) / "device_heterogeneity.png",
                    x="time")
    print(f"accuracy against virtual time: {png}")
    return summaries


if __name__ == "__main__":
    main()
