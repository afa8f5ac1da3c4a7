"""Asynchronous against synchronous FL on heterogeneous devices: test accuracy against virtual time, several seeds.

Synthetic(1,1), 100 clients, the quickstart's MLP (60-200-200-10, SGD lr 0.05, batch 32), 10 local steps per task,
in-process (local backend, direct channel). Device speeds are lognormal: seconds per training sample with median
2 ms and sigma 1, so a task of 10 x 32 samples takes 0.64 s on the median device and from about 0.05 s to 5-10 s across
the 100 clients; a FedAvg round waits for the slowest of its 10 clients, 2 to 3 virtual seconds. Every run stops
when the virtual clock reaches the same budget (`--budget`, 100 s). The strategies and their options:

  fedavg        synchronous, 10 clients a round
  fedasync      10 clients in flight; each arrival mixed in with weight 0.9 / sqrt(1 + staleness) (the defaults)
  fedbuff       10 clients in flight; a version every 5 arrivals, server lr 2, weight 1 / sqrt(1 + staleness)
  fedfix        10 clients in flight; whoever arrived is added every 0.75 virtual seconds, each weighted
                ceil(tau / interval) x its share of all samples (the paper's rule), server lr 10: with 10 of 100
                clients in flight a tick carries about a tenth of the weight, and M / C = 10 restores the step
  async_fedavg  10 clients in flight; each arrival applied at once with the duration correction, server lr 0.1
  fedcompass    all 100 clients in flight (its scheduler and its alpha / N step assume every client works); local
                steps Q in [4, 20] (it sets each task's steps itself), alpha 3, no staleness damping

Each method but FedCompass keeps at most 10 clients training, as FedAvg does; FedCompass keeps all 100 busy and so
trains about twenty times as many tasks in the same virtual time. The options were tuned lightly on seed 0, one or two
values each: fedasync alpha 0.6/0.9; fedbuff buffer 3/5, server lr 1/2, staleness damping or none; fedfix interval
0.75/1.5, server lr 10/20 (20 diverges on seed 1); async_fedavg server lr 0.05/0.1/0.2; fedcompass with its defaults
(alpha 0.9, weight 1 / sqrt(1 + staleness)) and Q in [2, 10], [4, 20] or [10, 50], then alpha 3 without damping. With the defaults
FedCompass learns slowly here: each update weighs alpha / 100, so all 100 clients together move the model about as far
as one FedAvg round, in about as long (0.48 at 150 s on seed 0, where FedBuff with server lr 1 reaches 0.70).

Writes <out>/async_vs_sync.png (test accuracy against virtual time: the mean over seeds as a line, from when every
seed has an evaluation, and min to max as a band), <out>/async_vs_sync.json and <out>/async_vs_sync.md (per strategy
and seed: the accuracy at the budget, the virtual time of the first evaluation at or above `--target`, versions
published and updates applied), and the run directories <out>/<strategy>-s<seed>. A full run takes about 7 minutes
on two cores with `--jobs 2` (N runs at once, in separate processes), three quarters of it FedCompass's.

Run:  python examples/async_vs_sync.py [--seeds 3] [--budget 100] [--target 0.45] [--out DIR] [--jobs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fl import load_config, run_simulation  # noqa: E402

QUICKSTART = Path(__file__).with_name("quickstart.toml")
SCENARIO = ['runtime.backend="local"', 'transport.channel="direct"', "client.steps=10", "eval.every=1",
            'devices.compute="lognormal:median=0.002,sigma=1.0"']  # seconds per training sample
STRATEGIES = {
    "fedavg": ["sampling.per_round=10"],
    "fedasync": ["strategy.concurrency=10"],
    "fedbuff": ["strategy.concurrency=10", "strategy.buffer_size=5", "strategy.server_lr=2.0"],
    "fedfix": ["strategy.concurrency=10", "strategy.interval=0.75", "strategy.server_lr=10.0"],
    "async_fedavg": ["strategy.concurrency=10", "strategy.server_lr=0.1"],
    "fedcompass": ["strategy.concurrency=0", "strategy.steps_min=4", "strategy.steps_max=20", "strategy.alpha=3.0",
                   'strategy.staleness="constant"'],
}
# --quick: 20 clients, a small MLP, 5 per FedAvg round; 5 virtual seconds, 2 seeds, target 0.3.
QUICK = ["data.num_clients=20", "model.hidden=[32]", "sampling.per_round=5"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="runs per strategy, seeds 0, 1, ...")
    parser.add_argument("--budget", type=float, default=100.0, help="virtual seconds every run gets")
    parser.add_argument("--target", type=float, default=0.45, help="the test accuracy whose first time is reported")
    parser.add_argument("--out", default="runs/async_vs_sync", help="folder of the plot, the tables and the runs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, in separate processes")
    parser.add_argument("--quick", action="store_true", help="20 clients, 5 virtual seconds, 2 seeds: a smoke test")
    return parser.parse_args(argv)


def run(strategy: str, seed: int, args: argparse.Namespace) -> list[dict]:
    """One run of `strategy` until the clock reaches the budget; its metrics rows."""
    quick = QUICK if args.quick else []
    config = load_config(QUICKSTART, [f'name="{strategy}-s{seed}"', f"seed={seed}", f"rounds={10**6}",
                                      f"max_virtual_seconds={args.budget}", f'strategy.name="{strategy}"',
                                      *SCENARIO, *STRATEGIES[strategy], *quick])
    config.output_dir = str(args.out)  # a path, set directly rather than written as a TOML value
    return run_simulation(config, show_progress=False).history


def evaluations(history: list[dict], budget: float) -> tuple[np.ndarray, np.ndarray]:
    """(virtual times, test accuracies) of the evaluations at or before the budget."""
    rows = [(m["virtual_time"], m["test_accuracy"]) for m in history if "test_accuracy" in m]
    times, accuracies = np.array([r for r in rows if r[0] <= budget]).reshape(-1, 2).T
    return times, accuracies


def summarize(strategy: str, seed: int, history: list[dict], args: argparse.Namespace) -> dict:
    """One table row: the accuracy at the budget, when the target was first reached, versions and updates."""
    times, accuracies = evaluations(history, args.budget)
    reached = times[accuracies >= args.target]
    return {"strategy": strategy, "seed": seed, "final_accuracy": float(accuracies[-1]) if len(times) else None,
            "time_to_target": float(reached[0]) if len(reached) else None, "versions": len(history),
            "updates": sum(m["clients"] for m in history)}


def accuracy_on(grid: np.ndarray, history: list[dict], budget: float) -> np.ndarray:
    """The accuracy of the latest evaluation at each grid time (nan before the first)."""
    times, accuracies = evaluations(history, budget)
    index = np.searchsorted(times, grid, side="right") - 1
    return np.where(index >= 0, accuracies[np.maximum(index, 0)], np.nan)


def plot(histories: dict[str, list[list[dict]]], args: argparse.Namespace) -> Path:
    """Test accuracy against virtual time, one curve per strategy: the mean over seeds, and a min-max band."""
    grid = np.linspace(0.0, args.budget, 301)
    figure, axes = plt.subplots(figsize=(8, 5))
    for strategy, runs in histories.items():
        curves = np.array([accuracy_on(grid, history, args.budget) for history in runs])
        line = axes.plot(grid, curves.mean(axis=0), label=strategy)[0]  # from when every seed has an evaluation
        axes.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2)
    axes.axhline(args.target, color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="virtual time (s)", ylabel="test accuracy",
             title=f"Synthetic(1,1), lognormal devices: mean and min-max over {args.seeds} seeds")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png = Path(args.out) / "async_vs_sync.png"
    figure.savefig(png, dpi=120)
    plt.close(figure)
    return png


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    def number(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    lines = [f"| strategy | seed | accuracy at {args.budget:g} s | time to {args.target:g} (s) | versions | updates |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['strategy']} | {r['seed']} | {number(r['final_accuracy'], '.4f')} | "
              f"{number(r['time_to_target'], '.1f')} | {r['versions']} | {r['updates']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every strategy with every seed, write the plot and the tables; returns the table's rows."""
    args = parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.target = min(args.seeds, 2), min(args.budget, 5.0), min(args.target, 0.3)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    keys = [(strategy, seed) for strategy in STRATEGIES for seed in range(args.seeds)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run, *zip(*keys), [args] * len(keys)))
    else:
        results = [run(strategy, seed, args) for strategy, seed in keys]
    histories: dict[str, list[list[dict]]] = {}
    for (strategy, _), history in zip(keys, results):
        histories.setdefault(strategy, []).append(history)
    rows = [summarize(strategy, seed, history, args) for (strategy, seed), history in zip(keys, results)]
    png = plot(histories, args)
    table = markdown(rows, args)
    (Path(args.out) / "async_vs_sync.md").write_text(table)
    settings = {"budget": args.budget, "target": args.target, "quick": QUICK if args.quick else [],
                "scenario": SCENARIO, "strategies": STRATEGIES}
    (Path(args.out) / "async_vs_sync.json").write_text(json.dumps({**settings, "runs": rows}, indent=1) + "\n")
    print(table + f"accuracy against virtual time: {png}")
    return rows


if __name__ == "__main__":
    main()
