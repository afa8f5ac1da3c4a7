"""What the message path costs: one decentralized run on every path, its seconds per round against the in-process
"nodes" engine run in the same process.

Scenario: 32 nodes of digits split by Dirichlet(0.3), a 64-64-10 MLP, 10 local SGD steps a round (batch 32), on a
ring (64 directed edges). Paths:
  in-process nodes   local backend, direct channel: node by node, mixed as one sparse product (the baseline)
  vectorized         local backend, direct channel: every node in one vmapped step
  local hosts, grpc  one host in this process; every message crosses gRPC on 127.0.0.1
  ray hosts, grpc    one host per Ray worker (`--workers`); messages cross gRPC between and within the actors
  ray tasks, direct  nodes train as tasks on the Ray pool; mixed in the run's actor
Rounds after the first are timed (the median); every nodes path must end with the baseline's bits. The same is run
for CHOCO with top-k (10 %) to show what compression saves on the wire.

Run:  python benchmarks/bench_gossip_paths.py [--rounds 6] [--workers 2] [--nodes 32] [--local]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from fl.config import load_config
from fl.ray_runtime import init_ray
from fl.simulation import run_simulation

PATHS = {
    "in-process nodes": ['runtime.backend="local"', 'transport.channel="direct"', 'topology.engine="nodes"'],
    "vectorized": ['runtime.backend="local"', 'transport.channel="direct"', 'topology.engine="vectorized"'],
    "local hosts, grpc": ['runtime.backend="local"', 'transport.channel="grpc"', 'topology.engine="nodes"'],
    "ray hosts, grpc": ['runtime.backend="ray"', 'transport.channel="grpc"', 'topology.engine="nodes"'],
    "ray tasks, direct": ['runtime.backend="ray"', 'transport.channel="direct"', 'topology.engine="nodes"'],
}
STRATEGIES = {
    "dpsgd": ['strategy.name="dpsgd"'],
    "choco top-k 10%": ['strategy.name="choco"', 'strategy.compression="topk:ratio=0.1"'],
}


def scenario(nodes: int, rounds: int, workers: int) -> list[str]:
    return [f"rounds={rounds}", 'data.name="digits"', f"data.num_clients={nodes}", f"sampling.per_round={nodes}",
            'data.partition="dirichlet"', "data.dirichlet_alpha=0.3", 'model.name="mlp"', "model.hidden=[64]",
            "client.steps=10", "client.batch_size=32", "client.lr=0.1", 'topology.name="ring"', "eval.every=0",
            f"runtime.num_workers={workers}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--local", action="store_true", help="only the paths without Ray")
    args = parser.parse_args()
    paths = {name: path for name, path in PATHS.items() if not (args.local and 'runtime.backend="ray"' in path)}
    if not args.local:
        init_ray()  # once: every Ray run below finds it running and leaves it up
    print(f"{args.nodes} nodes on a ring, {args.rounds} rounds; seconds per round: the median after round 1")
    print(f"{'strategy':16} {'path':18} {'s/round':>8} {'x baseline':>10} {'bytes/round':>12} {'same bits':>9}")
    for strategy, settings in STRATEGIES.items():
        baseline = None
        for path, overrides in paths.items():
            config = load_config(None, [*scenario(args.nodes, args.rounds, args.workers), *settings, *overrides])
            result = run_simulation(config, write=False, show_progress=False)
            seconds = statistics.median(result.round_seconds[1:])
            if baseline is None:
                baseline = result
            same = "-" if path == "vectorized" else str(torch.equal(result.global_params, baseline.global_params))
            print(f"{strategy:16} {path:18} {seconds:8.3f} {seconds / statistics.median(baseline.round_seconds[1:]):10.2f}"
                  f" {result.history[-1]['bytes_up']:12,} {same:>9}", flush=True)


if __name__ == "__main__":
    main()
