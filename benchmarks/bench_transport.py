"""What the gRPC transport costs and what the uplink codecs save, each against a baseline run in the same process.

1. A 100 MB model (25M float32) through a real gRPC server on 127.0.0.1 (TaskBoard + serve, 1 MiB chunks) and a
   FederationClient: download (fetch_params), upload (push_result), and the whole round trip, against
   `tensor.clone()` of the same 100 MB.
2. The quickstart workload (examples/quickstart.toml) on the in-process backend: the direct channel with identity
   uplink (the baseline), then gRPC with identity and with each uplink codec: bytes, final accuracy, time per round.
   Seeds run in the outer loop and paths in the inner one, so slow drift of the machine touches every row alike.
   A "targets" section states each target, the measured figure and whether it is met.
2b. (--sweep) Top-k with error feedback at 10, 50 and 100 clients per round and at ratios 1 %, 3 % and 10 %: where
   the accuracy target is met, and what it costs in bytes.
3. (--ray) The same per-round overhead of gRPC over the direct channel on the Ray backend.

    python benchmarks/bench_transport.py                    # tables 1 and 2: 3 seeds, 20 rounds
    python benchmarks/bench_transport.py --ray              # and table 3
    python benchmarks/bench_transport.py --sweep            # and table 2b (about 4 minutes a seed)
    python benchmarks/bench_transport.py --quick            # 10 MB, 1 seed, 5 rounds (development)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fl.config import RunConfig, load_config
from fl.scenario import build_data
from fl.simulation import run_simulation
from transport.codecs import make_codec
from transport.codecs.base import Payload
from transport.codecs.cast import IdentityCodec
from transport.grpc_client import FederationClient
from transport.board import TaskBoard
from transport.channel import Admission
from transport.grpc_server import serve
from transport.messages import TRAIN, Result, Task

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.toml"
CHUNK = 1 << 20  # 1 MiB frames, the transport's default
MB = 1e6
PATHS = [  # (label, channel, uplink codec spec); the first is the baseline of the time ratios
    ("direct, identity (baseline)", "direct", "identity"),
    ("gRPC, identity", "grpc", "identity"),
    ("gRPC, fp16", "grpc", "fp16"),
    ("gRPC, qsgd (int8)", "grpc", "qsgd"),
    ("gRPC, topk 1% (no EF)", "grpc", "topk:ratio=0.01"),
    ("gRPC, ef(topk 1%)", "grpc", "ef(topk:ratio=0.01)"),
    ("gRPC, ef21(topk 1%)", "grpc", "ef21(topk:ratio=0.01)"),
    ("gRPC, ef21(topk 1%+fp16)", "grpc", "ef21(topk:ratio=0.01+fp16)"),
    ("gRPC, sign", "grpc", "sign"),
    ("gRPC, ef(sign)", "grpc", "ef(sign)"),
]
UNCOMPRESSED = "gRPC, identity"  # the reference for bytes and accuracy: same channel, no compression
NO_EF_TOPK = "gRPC, topk 1% (no EF)"
EF_TOPK = ("gRPC, ef(topk 1%)", "gRPC, ef21(topk 1%)", "gRPC, ef21(topk 1%+fp16)")
MAX_OVERHEAD, MIN_REDUCTION, MAX_ACCURACY_LOSS = 0.20, 50.0, 1.0  # the targets (accuracy in points)


# Table 1: one large model over gRPC loopback.

def identity_payload(x: torch.Tensor) -> Payload:
    return IdentityCodec().encode(x, {})[0]


def decode_identity(client_id: int, payload: Payload) -> torch.Tensor:
    return IdentityCodec().decode(payload, {})[0]


class IdentityAdmission(Admission):
    """The loopback table's server admits client 0's identity-coded updates of any size."""

    def __init__(self) -> None:
        super().__init__(num_clients=1)

    def upload_limit(self) -> int:
        return 1 << 40

    def admit(self, result: Result) -> Result:
        self.check_client(result.client_id)
        return dataclasses.replace(result, update=decode_identity(result.client_id, result.update))


def loopback_seconds(num_floats: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each step, one entry per repeat; every round trip is checked to return the model bit for bit."""
    x = torch.randn(num_floats, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in ("clone", "publish", "download", "upload", "round trip")}
    for _ in range(repeats):
        start = time.perf_counter()
        x.clone()
        times["clone"].append(time.perf_counter() - start)
    board = TaskBoard(IdentityAdmission(), chunk_size=CHUNK)
    server, port = serve(board)
    client = FederationClient(f"127.0.0.1:{port}", chunk_size=CHUNK, timeout_seconds=600.0)
    try:
        client.join(0)  # the connection is up before anything is timed
        for version in range(1, repeats + 1):
            start = time.perf_counter()
            board.publish(version, identity_payload(x))
            times["publish"].append(time.perf_counter() - start)
            task_id = board.post(Task(TRAIN, version, client_id=0, seed=0))
            start = time.perf_counter()
            assignment = client.pull_task(0, task_id)
            params = decode_identity(0, client.fetch_params(version, 0, use_cache=False))
            fetched = time.perf_counter()
            client.push_result(assignment.task_id, Result(TRAIN, version, 0, 1, {}, update=identity_payload(params)))
            returned = board.take(task_id).update
            end = time.perf_counter()
            times["download"].append(fetched - start)
            times["upload"].append(end - fetched)
            times["round trip"].append(end - start)
            if not torch.equal(returned, x):
                raise AssertionError("the model came back changed")
    finally:
        client.close()
        server.stop(None)
    return times


def loopback_table(num_floats: int, repeats: int) -> dict[str, list[float]]:
    size = 4 * num_floats
    print(f"\n== 1. gRPC loopback (127.0.0.1, no TLS): one {size / MB:.0f} MB model ({num_floats:,} float32), "
          f"{CHUNK >> 20} MiB chunks, {repeats} repeats ==")
    times = loopback_seconds(num_floats, repeats)
    rows = [
        ("tensor.clone() (baseline)", "clone", size),
        ("publish (server serializes once)", "publish", size),
        ("download: pull_task + fetch_params", "download", size),
        ("upload: push_result + board.take", "upload", size),
        ("round trip: download + upload", "round trip", 2 * size),
    ]
    clone = min(times["clone"])
    print(f"{'step':<36}{'best s':>9}{'median s':>10}{'MB/s best':>11}{'x clone':>9}")
    for label, key, moved in rows:
        best, median = min(times[key]), statistics.median(times[key])
        print(f"{label:<36}{best:>9.3f}{median:>10.3f}{moved / MB / best:>11.0f}{best / clone:>9.1f}")
    print(f"MB/s: bytes moved (round trip: {2 * size / MB:.0f} MB) / best seconds. x clone: best seconds / best "
          f"seconds of one clone of the same {size / MB:.0f} MB (higher is slower). Client and server share this "
          "process and its CPUs.")
    return times


# Table 2: the quickstart workload with each channel and uplink codec.

def workload(seed: int, rounds: int, channel: str, uplink: str, backend: str = "local",
             extra: tuple[str, ...] = ()) -> RunConfig:
    return load_config(QUICKSTART, [f"seed={seed}", f"rounds={rounds}", "eval.every=0", f'runtime.backend="{backend}"',
                                    f'transport.channel="{channel}"', f'transport.uplink="{uplink}"', *extra])


def steady_mean(seconds: list[float]) -> float:
    """Mean seconds per round after the first (which pays one-off costs: connections, torch's lazy start)."""
    steady = seconds[1:] or seconds
    return sum(steady) / len(steady)


@dataclass
class PathRuns:
    """One path's figures, one entry per seed that finished."""

    label: str
    spec: str
    up_bytes: list[float] = field(default_factory=list)  # mean uplink bytes per round
    accuracy: dict[int, float] = field(default_factory=dict)  # seed -> final test accuracy
    seconds: list[float] = field(default_factory=list)  # steady mean seconds per round
    errors: list[str] = field(default_factory=list)
    payload: int = 0  # one client's encoded update (Payload.nbytes) for this model


def run_paths(seeds: list[int], rounds: int, paths: list[tuple[str, str, str]] = PATHS,
              extra: tuple[str, ...] = ()) -> tuple[dict[str, PathRuns], RunConfig, int]:
    """Run every path for every seed; returns the figures, the first config and the model's parameter count."""
    runs = {label: PathRuns(label, spec) for label, _, spec in paths}
    first, num_params = workload(seeds[0], rounds, "direct", "identity", extra=extra), 0
    for seed in seeds:
        data = build_data(first.data, seed)
        for label, channel, spec in paths:
            figures = runs[label]
            try:
                result = run_simulation(workload(seed, rounds, channel, spec, extra=extra), data=data, write=False,
                                        show_progress=False)
            except Exception as error:  # noqa: BLE001  (a diverging codec is a finding, not a crash of the benchmark)
                figures.errors.append(f"seed {seed}: {type(error).__name__}: {str(error)[:80]}")
                continue
            num_params = result.global_params.numel()
            figures.payload = payload_bytes(spec, num_params)
            accuracy = result.history[-1].get("test_accuracy", math.nan)
            if not math.isfinite(accuracy) or not math.isfinite(result.history[-1]["train_loss"]):
                figures.errors.append(f"seed {seed}: NaN loss or accuracy")
                continue
            figures.up_bytes.append(sum(h["bytes_up"] for h in result.history) / len(result.history))
            figures.accuracy[seed] = accuracy
            figures.seconds.append(steady_mean(result.round_seconds))
    return runs, first, num_params


def payload_bytes(spec: str, num_params: int) -> int:
    """One client's encoded update for a model of `num_params` float32 values (what the codec puts on the wire)."""
    x = torch.randn(num_params, generator=torch.Generator().manual_seed(0))
    return make_codec(spec).encode(x, {}, torch.Generator().manual_seed(0))[0].nbytes()


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def accuracy_change(runs: PathRuns, reference: PathRuns) -> float:
    """Mean over the seeds both finished of (this path's final accuracy - the reference's), in points."""
    seeds = runs.accuracy.keys() & reference.accuracy.keys()
    return mean([100 * (runs.accuracy[s] - reference.accuracy[s]) for s in seeds])


def codec_table(seeds: list[int], rounds: int, paths: list[tuple[str, str, str]] = PATHS,
                extra: tuple[str, ...] = ()) -> dict[str, PathRuns]:
    """Print table 2 for `paths` (the first is the time baseline; UNCOMPRESSED must be among them)."""
    config = workload(seeds[0], rounds, "direct", "identity", extra=extra)
    data = build_data(config.data, seeds[0])
    c, layers = config.client, [math.prod(data.feature_shape), *config.model.hidden, data.num_classes]
    model = f"{config.model.name.upper()} {'-'.join(map(str, layers))}"
    print(f"\n== 2. Synthetic({config.data.alpha:g},{config.data.beta:g}), {config.data.num_clients} clients, "
          f"{config.sampling.per_round} per round, {model}, {c.optimizer.upper()} lr {c.lr:g}, batch {c.batch_size}, "
          f"{c.epochs} local epoch; in-process backend; {rounds} rounds; mean over {plural(len(seeds), 'seed')} "
          f"({', '.join(map(str, seeds))}) ==")
    runs, config, num_params = run_paths(seeds, rounds, paths, extra)
    per_round = config.sampling.per_round
    reference, baseline = runs[UNCOMPRESSED], mean(runs[paths[0][0]].seconds)
    print(f"{'path, uplink codec':<28}{'up B/round':>12}{'x fewer':>9}{'payload B':>11}{'final acc':>11}"
          f"{'d acc pts':>11}{'s/round':>9}{'x direct':>10}")
    flagged = False
    for label, _, _ in paths:
        r = runs[label]
        if r.errors:
            print(f"{label:<28}  FAILED: {'; '.join(r.errors)}")
            if not r.accuracy:
                continue
        up, payload = mean(r.up_bytes), r.payload
        flag = " *" if up > per_round * (1.05 * payload + 1024) else ""  # beyond payload plus frame headers
        flagged = flagged or bool(flag)
        print(f"{label:<28}{up:>12,.0f}{mean(reference.up_bytes) / up:>9.1f}{payload:>11,}"
              f"{mean(list(r.accuracy.values())):>11.3f}{accuracy_change(r, reference):>+11.1f}"
              f"{mean(r.seconds):>9.4f}{mean(r.seconds) / baseline:>10.2f}{flag}")
    print(f"up B/round: uplink bytes per round as the channel counts them (direct: payload bytes; gRPC: serialized "
          f"frames, headers included), mean over rounds and seeds. x fewer: {UNCOMPRESSED!r} up B/round / this row's.")
    print(f"payload B: one client's encoded update of this {num_params:,}-parameter model (Payload.nbytes). "
          f"final acc: test accuracy after round {rounds}, mean over seeds; single seeds swing by tens of points.")
    print(f"d acc pts: mean over seeds of (this row - {UNCOMPRESSED!r}) final accuracy, in points (same seeds, same "
          "client samples). s/round: mean of rounds 2..N, then over seeds. x direct: s/round / the baseline row's.")
    if flagged:
        print(f"* the channel counts more than {per_round} clients' payloads plus frame headers: something beyond the "
              "update travels or is charged as uplink traffic (for example client state such as EF residuals).")
    return runs


def verdict(met: bool | None) -> str:
    return "shown (no target)" if met is None else "met" if met else "NOT MET"


def targets(runs: dict[str, PathRuns]) -> list[tuple[str, str, bool | None]]:
    """(target, measured figure, met) for each target, computed from the figures of table 2."""
    out: list[tuple[str, str, bool | None]] = []
    direct, grpc = mean(runs[PATHS[0][0]].seconds), mean(runs[UNCOMPRESSED].seconds)  # PATHS[0]: direct, identity
    overhead = grpc / direct - 1
    out.append((f"gRPC + identity adds <= {MAX_OVERHEAD:.0%} per-round time over the direct channel",
                f"{overhead:+.1%} ({grpc:.4f} vs {direct:.4f} s/round)", overhead <= MAX_OVERHEAD))
    reference = runs[UNCOMPRESSED]
    for label in [label for label in EF_TOPK if label in runs]:
        r = runs[label]
        if not r.accuracy:
            out.append((f"{label}: runs finish", "; ".join(r.errors), False))
            continue
        reduction = mean(reference.up_bytes) / mean(r.up_bytes)
        out.append((f"{label}: uplink bytes >= {MIN_REDUCTION:.0f}x fewer than uncompressed",
                    f"{reduction:.1f}x as counted (the codec's payload alone: {reference.payload / r.payload:.1f}x)",
                    reduction >= MIN_REDUCTION))
        change = accuracy_change(r, reference)
        out.append((f"{label}: final accuracy no more than {MAX_ACCURACY_LOSS:g} point below uncompressed",
                    f"{change:+.1f} points (mean of {plural(len(r.accuracy), 'seed')})", change >= -MAX_ACCURACY_LOSS))
    no_ef = runs.get(NO_EF_TOPK)
    if no_ef is not None and no_ef.accuracy:
        ef = ", ".join(f"{label.removeprefix('gRPC, ')} {accuracy_change(runs[label], reference):+.1f}"
                       for label in EF_TOPK if label in runs and runs[label].accuracy)
        out.append((f"{NO_EF_TOPK}: the accuracy lost without error feedback",
                    f"{accuracy_change(no_ef, reference):+.1f} points vs uncompressed (with EF: {ef})", None))
    return out


def print_targets(rows: list[tuple[str, str, bool | None]], seeds: list[int]) -> None:
    print(f"\ntargets (from table 2, {plural(len(seeds), 'seed')}):")
    for target, measured, met in rows:
        print(f"  {target}: {measured} -> {verdict(met)}")


# Table 2b (--sweep): where top-k with error feedback meets the accuracy target, by participation and ratio.

SWEEP_CODECS = [  # (label, uplink spec); the first is each participation's reference
    ("identity", "identity"),
    ("topk 1% (no EF)", "topk:ratio=0.01"),
    ("ef(topk 1%+fp16)", "ef(topk:ratio=0.01+fp16)"),
    ("ef21(topk 1%+fp16)", "ef21(topk:ratio=0.01+fp16)"),
    ("ef(topk 3%+fp16)", "ef(topk:ratio=0.03+fp16)"),
    ("ef(topk 10%+fp16)", "ef(topk:ratio=0.1+fp16)"),
]


def sweep_table(seeds: list[int], rounds: int, per_round: tuple[int, ...] = (10, 50, 100),
                codecs: list[tuple[str, str]] = SWEEP_CODECS, extra: tuple[str, ...] = ()) -> dict[int, dict[str, PathRuns]]:
    """Final accuracy against identity, on the direct channel, for each clients-per-round count and uplink codec."""
    print(f"\n== 2b. The same workload, {rounds} rounds, by clients per round: final accuracy of each uplink codec "
          f"against identity at the same participation; mean over {plural(len(seeds), 'seed')} ==")
    print(f"{'per round':>9}  {'uplink codec':<22}{'x fewer':>9}{'final acc':>11}{'d acc pts':>11}{'   within 1 pt':>15}")
    found: dict[int, dict[str, PathRuns]] = {}
    for count in per_round:
        paths = [(label, "direct", spec) for label, spec in codecs]
        runs, _, _ = run_paths(seeds, rounds, paths, (*extra, f"sampling.per_round={count}"))
        reference = runs[codecs[0][0]]
        for label, _ in codecs:
            r = runs[label]
            if not r.accuracy:
                print(f"{count:>9}  {label:<22}  FAILED: {'; '.join(r.errors)}")
                continue
            change = accuracy_change(r, reference)
            print(f"{count:>9}  {label:<22}{mean(reference.up_bytes) / mean(r.up_bytes):>9.1f}"
                  f"{mean(list(r.accuracy.values())):>11.3f}{change:>+11.1f}"
                  f"{'yes' if change >= -MAX_ACCURACY_LOSS else 'no':>15}")
        found[count] = runs
    print("x fewer: identity's uplink bytes per round / this codec's (direct channel: payload bytes). Each client "
          "takes part in about rounds x per round / clients rounds; its EF residual waits that long in between.")
    return found


# Table 3: the Ray backend.

def ray_table(rounds: int) -> None:
    from fl.ray_runtime import init_ray  # noqa: I001  (first: it keeps a local Ray on 127.0.0.1)

    import ray

    configs = {channel: workload(0, rounds, channel, "identity", backend="ray") for channel in ("direct", "grpc")}
    data = build_data(configs["direct"].data, 0)  # before Ray starts
    init_ray()
    try:
        workers = configs["direct"].runtime.num_workers or int(ray.available_resources().get("CPU", 0))
        print(f"\n== 3. Ray backend ({workers} workers), identity uplink, seed 0, {rounds} rounds ==")
        print(f"{'channel':<28}{'s/round':>9}{'x direct':>10}{'round 1 s':>11}")
        seconds: dict[str, float] = {}
        for channel, label in (("direct", "direct (Ray objects)"), ("grpc", "gRPC")):
            result = run_simulation(configs[channel], data=data, write=False, show_progress=False)
            seconds[channel] = steady_mean(result.round_seconds)
            print(f"{label:<28}{seconds[channel]:>9.4f}{seconds[channel] / seconds['direct']:>10.2f}"
                  f"{result.round_seconds[0]:>11.2f}")
        overhead = seconds["grpc"] / seconds["direct"] - 1
        print("s/round: mean of rounds 2..N. round 1 s: the first round, which also waits for the server and worker "
              "actors to start (Ray itself was started before).")
        print(f"target: gRPC adds <= {MAX_OVERHEAD:.0%} per-round time on Ray: {overhead:+.1%} -> "
              f"{verdict(overhead <= MAX_OVERHEAD)}")
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for table 2 (default 3)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per run in tables 2 and 3 (default 20)")
    parser.add_argument("--ray", action="store_true", help="also table 3, the Ray backend")
    parser.add_argument("--quick", action="store_true", help="development: a 10 MB model, 1 seed, 5 rounds")
    parser.add_argument("--sweep", action="store_true",
                        help="also table 2b: top-k with error feedback at 10, 50 and 100 clients per round")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    seeds, rounds = (1, 5) if args.quick else (args.seeds, args.rounds)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible" + (", --quick" if args.quick else ""))
    loopback_table(2_500_000 if args.quick else 25_000_000, 3)
    runs = codec_table(list(range(seeds)), rounds)
    print_targets(targets(runs), list(range(seeds)))
    if args.sweep:
        sweep_table(list(range(seeds)), rounds)
    if args.ray:
        ray_table(rounds)


if __name__ == "__main__":
    main()
