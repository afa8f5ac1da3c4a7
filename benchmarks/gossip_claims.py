"""Two claims about gossip strategies, measured per seed on the scenario of examples/gossip_topologies.py.

Scenario: 32 nodes, digits split by Dirichlet(0.3) over labels, a 64-64-10 MLP, 10 local SGD steps per round (batch
32, lr 0.1), every node evaluated every round (the averaged model on the central test set; each node's own model on
the same set).

(a) "Variance-corrected averaging from independent initializations converges about as fast as FedAvg and faster
    than plain averaging." On a random 4-regular graph, every node drawing its own initial model
    (topology.independent_init=true):
      vc            variance_corrected, its defaults (conservative = 0.5: half its own model, half the received mean);
      vc-c0.2       variance_corrected, conservative = 0.2: the same weights as D-PSGD's (1/5 each), so it differs
                    from dpsgd-indep only by the variance correction;
      dpsgd-indep   D-PSGD (plain averaging, Metropolis weights 1/5) from the same independent initial models;
      dpsgd-shared  D-PSGD from one shared initial model (for reference);
      fedavg        synchronous FedAvg, all 32 clients every round, the same data, model and local steps;
    and, to tell the graph from the initialization, vc and dpsgd-indep on the complete graph (uniform weights 1/32,
    as FedAvg's average), where only the independent initial models set them apart from FedAvg.
    Prints the averaged model's accuracy at a few rounds, the rounds it takes the averaged model and the nodes' mean
    accuracy to reach `--target`, and both at the end. FedAvg has one model: its node accuracy is its test accuracy.

(b) "DFedSAM(-MGS) beats D-PSGD on sparse graphs with heterogeneous data." On the ring: dpsgd, dfedsam and
    dfedsam_mgs (Q = 4 gossip steps per round, 4x the messages) for each rho of `--rhos`, and dfedsam_mgs with rho = 0
    (multiple gossip steps without SAM) to tell the two apart. Prints the final averaged-model accuracy, its mean over
    the last 5 rounds, the nodes' mean and worst accuracy, the consensus distance and the bytes per round.

The test set holds 180 samples: one sample is 0.0056 of accuracy. rho is picked on that same test set, so the best
rho's margin is optimistic.

Run:  python benchmarks/gossip_claims.py [--claim a|b|both] [--seeds 0 1 2] [--rounds 60] [--rhos 0.01 0.05 0.1]
      [--jobs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

SCENARIO = [
    'data.name="digits"', "data.num_clients=32", 'data.partition="dirichlet"', "data.dirichlet_alpha=0.3",
    'model.name="mlp"', "model.hidden=[64]", "client.steps=10", "client.batch_size=32", "client.lr=0.1",
    'runtime.backend="local"', 'transport.channel="direct"', "eval.every=1",
]
REGULAR = ['topology.name="regular"', "topology.degree=4"]
INDEPENDENT = ["topology.independent_init=true"]
CLAIM_A = {
    "vc": ['strategy.name="variance_corrected"', *REGULAR, *INDEPENDENT],
    "vc-c0.2": ['strategy.name="variance_corrected"', "strategy.conservative=0.2", *REGULAR, *INDEPENDENT],
    "dpsgd-indep": ['strategy.name="dpsgd"', *REGULAR, *INDEPENDENT],
    "dpsgd-shared": ['strategy.name="dpsgd"', *REGULAR],
    "fedavg": ['strategy.name="fedavg"', "sampling.per_round=32"],
    # The complete graph: every node averages all 32 models, as FedAvg's server does (c = 1/32: uniform weights).
    "vc complete": ['strategy.name="variance_corrected"', "strategy.conservative=0.03125", 'topology.name="complete"',
                    *INDEPENDENT],
    "dpsgd-indep complete": ['strategy.name="dpsgd"', 'topology.name="complete"', *INDEPENDENT],
}
CHECKPOINTS = (5, 10, 20, 40)


def claim_b_runs(rhos: list[float]) -> dict[str, list[str]]:
    ring = ['topology.name="ring"']
    runs = {"dpsgd": ['strategy.name="dpsgd"', *ring]}
    for rho in rhos:
        runs[f"dfedsam rho={rho:g}"] = ['strategy.name="dfedsam"', f"strategy.rho={rho!r}", *ring]
    for rho in [0.0, *rhos]:
        runs[f"mgs rho={rho:g}"] = ['strategy.name="dfedsam_mgs"', f"strategy.rho={rho!r}", *ring]
    return runs


def history(overrides: list[str]) -> list[dict]:
    """One run in this process, not written: its metrics rows."""
    from fl import load_config, run_simulation

    config = load_config(None, ['name="claims"', *SCENARIO, *overrides])
    return run_simulation(config, show_progress=False, write=False).history


def run_all(runs: dict[str, list[str]], args: argparse.Namespace) -> dict[tuple[str, int], list[dict]]:
    """Every run for every seed, `--jobs` at a time: {(name, seed): rows}."""
    jobs = {(name, seed): [f"seed={seed}", f"rounds={args.rounds}", *overrides]
            for seed in args.seeds for name, overrides in runs.items()}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(history, overrides) for key, overrides in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def node_mean(row: dict) -> float:
    return row.get("node_accuracy_mean", row["test_accuracy"])  # a server run holds one model


def rounds_to(rows: list[dict], target: float, value=lambda m: m["test_accuracy"]) -> str:
    reached = [m["round"] for m in rows if value(m) >= target]
    return str(reached[0]) if reached else "-"


def claim_a(results: dict, args: argparse.Namespace) -> None:
    checkpoints = [r for r in CHECKPOINTS if r < args.rounds]
    header = (f"{'run':<22}" + "".join(f"{f'@{r}':>7}" for r in checkpoints)
              + f"{'final':>7}{'to ' + str(args.target):>8}{'node mean':>10}{'node to':>8}{'node min':>9}")
    print(f"(a) random 4-regular graph unless named, independent initial models (fedavg, dpsgd-shared: one shared), "
          f"{args.rounds} rounds; "
          f"averaged-model accuracy at rounds, rounds to {args.target}, and the nodes' own models")
    for seed in args.seeds:
        print(f"seed {seed}\n{header}")
        for name in CLAIM_A:
            rows = results[(name, seed)]
            at = "".join(f"{rows[r - 1]['test_accuracy']:>7.3f}" for r in checkpoints)
            last = rows[-1]
            print(f"{name:<22}{at}{last['test_accuracy']:>7.3f}{rounds_to(rows, args.target):>8}"
                  f"{node_mean(last):>10.3f}{rounds_to(rows, args.target, node_mean):>8}"
                  f"{last.get('node_accuracy_min', last['test_accuracy']):>9.3f}")
    print(f"mean over seeds\n{header}")
    for name in CLAIM_A:
        runs = [results[(name, seed)] for seed in args.seeds]
        mean = lambda value: float(np.mean([value(rows) for rows in runs]))  # noqa: E731
        at = "".join(f"{mean(lambda rows: rows[r - 1]['test_accuracy']):>7.3f}" for r in checkpoints)
        print(f"{name:<22}{at}{mean(lambda rows: rows[-1]['test_accuracy']):>7.3f}{'':>8}"
              f"{mean(lambda rows: node_mean(rows[-1])):>10.3f}{'':>8}"
              f"{mean(lambda rows: rows[-1].get('node_accuracy_min', rows[-1]['test_accuracy'])):>9.3f}")


def claim_b(results: dict, runs: dict, args: argparse.Namespace) -> None:
    header = (f"{'run':<18}{'final':>7}{'last 5':>8}{'node mean':>10}{'node min':>9}{'consensus':>11}"
              f"{'KB/round':>10}")
    print(f"(b) ring, {args.rounds} rounds: averaged-model accuracy (final, mean of the last 5 rounds), the nodes' own "
          f"models, consensus distance")
    summary = {}
    for seed in [*args.seeds, None]:
        print(f"{'mean over seeds' if seed is None else f'seed {seed}'}\n{header}")
        for name in runs:
            keys = args.seeds if seed is None else [seed]
            rows = [results[(name, s)] for s in keys]
            figures = np.mean([[r[-1]["test_accuracy"], np.mean([m["test_accuracy"] for m in r[-5:]]),
                                r[-1]["node_accuracy_mean"], r[-1]["node_accuracy_min"], r[-1]["consensus_distance"],
                                r[-1]["bytes_up"] / 1e3] for r in rows], axis=0)
            summary[(name, seed)] = figures
            print(f"{name:<18}{figures[0]:>7.3f}{figures[1]:>8.3f}{figures[2]:>10.3f}{figures[3]:>9.3f}"
                  f"{figures[4]:>11.3f}{figures[5]:>10.0f}")
    for family in ("dfedsam", "mgs"):
        best = max((name for name in runs if name.startswith(family) and not name.endswith("rho=0")),
                   key=lambda name: summary[(name, None)][2])
        wins = [f"{summary[(best, s)][2] - summary[('dpsgd', s)][2]:+.3f}" for s in args.seeds]
        print(f"{best} (best rho by mean node accuracy) minus dpsgd, node mean per seed: {', '.join(wins)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--claim", choices=("a", "b", "both"), default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.01, 0.05, 0.1], help="SAM radii for (b)")
    parser.add_argument("--target", type=float, default=0.8, help="accuracy whose first round (a) reports")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one process and thread each")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.claim in ("a", "both"):
        claim_a(run_all(CLAIM_A, args), args)
    if args.claim in ("b", "both"):
        runs = claim_b_runs(args.rhos)
        claim_b(run_all(runs, args), runs, args)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
