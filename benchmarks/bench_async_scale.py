"""Asynchronous FedBuff at scale: the server's memory beyond the data set as registered clients grow, and client
updates per wall second against synchronous FedAvg doing the same number of updates.

Memory: FedBuff (K = 100) with the same 1,000 clients in flight, once with 1,000 and once with 10,000 registered
clients. Each configuration runs in a fresh child process (forked from a fork server that only imported the modules;
spawned where there is none), so peaks never mix: the data set and the server are built (after a throwaway one-client
round, so torch's lazy imports are not counted), the heap is trimmed and the RSS read (the baseline), the kernel's
peak-RSS mark is reset (/proc/self/clear_refs), N versions run, and the peak since the reset minus the baseline is the
server's peak RSS beyond data and server. The
literal getrusage reading (ru_maxrss after the run minus ru_maxrss after the build) is printed too: it reads 0 whenever
building the data set peaked higher than the run. An inventory of the server's per-client and per-event structures
(entries and bytes, counted from the objects) says what grows with registered clients and what with the run;
--trace adds tracemalloc's top lines for the Python and numpy memory allocated during the run (not torch's).

Throughput: client updates per wall second, FedBuff (1,000 in flight, K = 100, V versions) against FedAvg (100 per
round, V rounds): the same data, model (MLP 60-32-10), local training (a fixed number of SGD steps, so every update
costs the same) and device profiles (lognormal compute, so FedBuff's arrivals are stale), on the local backend and on
Ray with 2 workers. Both run in one child process per backend, the synchronous baseline first (--repeats N: N
FedAvg/FedBuff pairs, interleaved). `applied` counts the
updates the server consumed; `trained` (local backend only) counts every task trained, which for FedBuff includes
in-flight tasks its lazy batches trained ahead of their arrival. Wall time runs from the first round to the last
(start-up excluded), and on the local backend the child's CPU seconds too (steadier on a shared machine);
evaluation never runs. --profile N prints cProfile's top N functions of a shorter local run of
each strategy.

    python benchmarks/bench_async_scale.py                  # memory 1k vs 10k registered; throughput local + Ray
    python benchmarks/bench_async_scale.py --quick          # tiny sizes, local only (the smoke test; < 20 s)
    python benchmarks/bench_async_scale.py --part throughput --no-ray --profile 20
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import dataclasses
import gc
import io
import multiprocessing
import os
import pstats
import resource
import sys
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl.config import RunConfig, load_config
from fl.pool import LocalPool
from fl.scenario import build_data, build_model_fn
from fl.server import Server
from fl.simulation import server_setup, start_server
from fl.worker import Worker
from transport.inprocess import InProcessChannel

COMPUTE = "lognormal:median=0.001,sigma=1"  # seconds per sample: heterogeneous devices, so arrivals are stale


@dataclass(frozen=True)
class Scale:
    registered: tuple[int, ...]  # memory: registered clients of each configuration (the first is the baseline)
    in_flight: int  # FedBuff's concurrency
    buffer: int  # FedBuff's K, and FedAvg's clients per round
    versions: int  # memory: versions each configuration runs
    clients: int  # throughput: registered clients
    rounds: int  # throughput: FedBuff's versions and FedAvg's rounds
    steps: int  # local SGD steps per update
    hidden: int  # the MLP's hidden width
    backends: tuple[str, ...]


FULL = Scale((1000, 10000), 1000, 100, 30, 2000, 50, 10, 32, ("local", "ray"))
QUICK = Scale((100, 400), 50, 10, 4, 200, 4, 2, 16, ("local",))


def run_config(scale: Scale, registered: int, strategy: str, rounds: int, backend: str = "local",
               workers: int = 2, seed: int = 0) -> RunConfig:
    """The benchmark's run: synthetic data, the small MLP, fixed local steps, lognormal compute, the direct channel."""
    overrides = [f"data.num_clients={registered}", f"model.hidden=[{scale.hidden}]", f"client.steps={scale.steps}",
                 f"rounds={rounds}", f"seed={seed}", "eval.every=0", f'runtime.backend="{backend}"',
                 f"runtime.num_workers={workers}", 'transport.channel="direct"', f'devices.compute="{COMPUTE}"']
    if strategy == "fedbuff":
        overrides += ['strategy.name="fedbuff"', f"strategy.concurrency={scale.in_flight}",
                      f"strategy.buffer_size={scale.buffer}"]
    else:
        overrides += ['strategy.name="fedavg"', f"sampling.per_round={scale.buffer}"]
    return load_config(None, overrides)


def local_server(config: RunConfig, data: Any) -> Server:
    """The server `start_server` makes for the local backend, kept at hand so that its structures can be read."""
    setup = server_setup(config, data, build_model_fn(config.model, data))
    return Server(setup, InProcessChannel, lambda worker_setup, endpoint: LocalPool(Worker(worker_setup, endpoint)))


# ---- memory ----------------------------------------------------------------------------------------------------

def status_kb(key: str) -> int | None:
    """A VmRSS / VmHWM reading of this process in kB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Collect garbage and hand glibc's free heap back to the OS, so later allocations show up as RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of `obj` and what it holds: containers, dataclasses, numpy arrays and torch tensors (storage counted
    once per object seen). Approximate: small cached ints count as if they were owned."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return sys.getsizeof(obj) + obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return sys.getsizeof(obj)  # with its data when it owns it
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_size(item, seen) for item in obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        size += sum(deep_size(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return size


def inventory(server: Server, rows: list[dict[str, Any]]) -> list[tuple[str, str, int, int]]:
    """(structure, when it is made, entries, bytes) of what the server keeps per client, per task and per event."""
    loop, timing, channel = server.loop, server.timing, server.channel
    profiles = server.setup.devices
    items: list[tuple[str, str, Any, int]] = []
    if loop is not None:
        items += [
            ("loop.busy + loop.tasks_started", "run", (loop.busy, loop.tasks_started), len(loop.busy)),
            ("loop.flights (tasks, results)", "run", loop.flights, len(loop.flights)),
            ("loop.snapshots (params by version)", "run", loop.snapshots, len(loop.snapshots)),
            ("loop.queue (events pending)", "run", loop.queue._heap, len(loop.queue)),
            ("loop.events (the event log)", "run", loop.events, len(loop.events)),
            ("loop.histogram", "run", loop.histogram, len(loop.histogram)),
        ]
    items += [
        ("timing.downloads.held (ledger)", "run", timing.downloads.held, len(timing.downloads.held)),
        ("channel.downloads.held (ledger)", "run", getattr(getattr(channel, "downloads", None), "held", {}),
         len(getattr(getattr(channel, "downloads", None), "held", {}))),
        ("decoder.states + staged", "run", (server.decoder.states, server.decoder.staged),
         len(server.decoder.states) + len(server.decoder.staged)),
        ("client state store", "run", server.store._states, len(server.store)),
        ("metrics rows (bytes_by_client)", "run", rows, len(rows)),
        ("timing.train_sizes (list of ints)", "build", timing.train_sizes, len(timing.train_sizes)),
        ("server.sizes (array)", "build", server.sizes, len(server.sizes)),
    ]
    if profiles is not None:
        arrays = (profiles.compute, profiles.bandwidth_up, profiles.bandwidth_down, profiles.latency, profiles.dropout)
        items.append(("device profiles (5 float64 arrays)", "build", arrays, profiles.num_clients))
    return [(name, when, entries, deep_size(obj)) for name, when, obj, entries in items]


def memory_child(scale: Scale, registered: int, trace: int) -> dict[str, Any]:
    """One configuration in a fresh process: build, baseline, run `scale.versions` versions, measure."""
    torch.set_num_threads(1)
    config = run_config(scale, registered, "fedbuff", scale.versions)
    start = time.perf_counter()
    data = build_data(config.data, config.seed)
    warm_up(scale, data)
    server = local_server(config, data)
    build_seconds = time.perf_counter() - start
    trim_heap()
    rss_build, maxrss_build = status_kb("VmRSS"), maxrss_kb()
    peak_reset = reset_peak()
    if trace:
        tracemalloc.start(1)
    start = time.perf_counter()
    rows = [server.run_round(version) for version in range(1, scale.versions + 1)]
    run_seconds = time.perf_counter() - start
    top: list[tuple[str, float, int]] = []
    if trace:
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = snapshot.statistics("lineno")
        top = [(f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}", s.size / 1024, s.count)
               for s in stats[:trace]]
    gc.collect()
    hwm, rss_run, maxrss_run = status_kb("VmHWM"), status_kb("VmRSS"), maxrss_kb()
    staleness = [r["staleness_mean"] for r in rows if r["staleness_mean"] is not None]
    result = {
        "registered": registered,
        "data_mb": sum(a.nbytes for a in (data.x, data.y, data.test_x, data.test_y)) / 2**20,
        "build_s": build_seconds,
        "run_s": run_seconds,
        "applied": sum(r["clients"] for r in rows),
        "staleness": sum(staleness) / len(staleness) if staleness else 0.0,
        "rss_build_mb": (rss_build or 0) / 1024,
        "peak_beyond_mb": ((hwm if peak_reset and hwm else maxrss_run) - (rss_build or maxrss_build)) / 1024,
        "peak_reset": peak_reset,
        "growth_mb": ((rss_run or 0) - (rss_build or 0)) / 1024,
        "maxrss_build_mb": maxrss_build / 1024,
        # what ru_maxrss after the run minus ru_maxrss after the build reads without the reset (the reset lowers it)
        "maxrss_delta_mb": (max(maxrss_build, hwm or maxrss_run) - maxrss_build) / 1024,
        "inventory": inventory(server, rows),
        "trace": top,
    }
    server.close()
    return result


def in_child(function: Any, *args: Any) -> Any:
    """`function(*args)` in a fresh process: forked from a fork server that only imported the modules (so no peak
    or heap of this process or of another child carries over), or spawned where there is no fork server."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["torch", "fl.simulation", "fl.server"])  # imports once, not per child
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def warm_up(scale: Scale, data: Any) -> None:
    """One throwaway FedAvg round of one client: torch's lazy imports and first-call costs happen here, neither in
    a baseline nor in a timed run."""
    config = run_config(scale, data.num_clients, "fedavg", 1)
    config.sampling.per_round = 1
    server = local_server(config, data)
    server.run_round(1)
    server.close()


def bench_memory(scale: Scale, trace: int) -> list[dict[str, Any]]:
    print(f"\n== Memory: FedBuff K={scale.buffer}, {scale.in_flight} in flight, {scale.versions} versions, "
          f"registered {' vs '.join(f'{n:,}' for n in scale.registered)}; local backend, direct channel; "
          f"one fresh process each ==")
    runs = [in_child(memory_child, scale, registered, trace) for registered in scale.registered]
    base = runs[0]
    print(f"{'registered':>10}{'data MB':>9}{'build peak MB':>14}{'RSS built MB':>13}{'peak beyond MB':>15}"
          f"{'x base':>8}{'RSS growth MB':>14}{'ru_maxrss d MB':>15}{'applied':>9}{'stale':>7}{'build s':>8}"
          f"{'run s':>7}")
    for r in runs:
        ratio = r["peak_beyond_mb"] / base["peak_beyond_mb"] if base["peak_beyond_mb"] > 0 else float("nan")
        print(f"{r['registered']:>10,}{r['data_mb']:>9.0f}{r['maxrss_build_mb']:>14.0f}{r['rss_build_mb']:>13.0f}"
              f"{r['peak_beyond_mb']:>15.1f}{ratio:>8.2f}{r['growth_mb']:>14.1f}{r['maxrss_delta_mb']:>15.1f}"
              f"{r['applied']:>9}{r['staleness']:>7.2f}{r['build_s']:>8.1f}{r['run_s']:>7.1f}")
    for r in runs[1:]:
        extra = r["registered"] - base["registered"]
        print(f"beyond the baseline: {extra:,} more registered clients cost "
              f"{(r['peak_beyond_mb'] - base['peak_beyond_mb']) * 2**20 / extra:+.0f} B each of peak RSS in the run "
              f"(RSS growth {(r['growth_mb'] - base['growth_mb']) * 2**20 / extra:+.0f} B each)")
    print("data MB: the data set's arrays (the workers hold a torch copy). build peak: ru_maxrss after building data "
          "and server. RSS built: RSS after the build, the heap trimmed (the baseline). peak beyond: the peak RSS "
          "while running minus the baseline. RSS growth: RSS after the run minus the baseline. ru_maxrss d: ru_maxrss "
          "after the run minus ru_maxrss after the build (0 when building peaked higher than running).")
    if not base["peak_reset"]:
        print("(no /proc/self/clear_refs here: 'peak beyond' is ru_maxrss after the run minus RSS after the build)")
    print("\nWhat the server holds after the run (entries, KB), counted from its objects; 'build' structures exist "
          "before the baseline, 'run' ones are made or grow during it. B/registered: the bytes of the last "
          "configuration minus the first's, per extra registered client:")
    names = [name for name, *_ in base["inventory"]]
    header = "".join(f"{f'{n:,} entries':>15}{'KB':>10}" for n in scale.registered)
    print(f"{'structure':<38}{'made':>6}{header}{'B/registered':>14}")
    for i, name in enumerate(names):
        cells = "".join(f"{r['inventory'][i][2]:>15,}{r['inventory'][i][3] / 1024:>10.1f}" for r in runs)
        per = ""
        if len(runs) > 1:
            extra = runs[-1]["registered"] - base["registered"]
            per = f"{(runs[-1]['inventory'][i][3] - base['inventory'][i][3]) / extra:>14.1f}"
        print(f"{name:<38}{base['inventory'][i][1]:>6}{cells}{per}")
    if trace:
        for r in runs:
            print(f"\ntracemalloc, {r['registered']:,} registered: top lines by memory allocated during the run and "
                  f"still held (Python and numpy; torch's tensors are not traced)")
            for where, kb, count in r["trace"]:
                print(f"  {where:<40}{kb:>10.1f} KB{count:>10} blocks")
    return runs


# ---- throughput ------------------------------------------------------------------------------------------------

@dataclass
class Run:
    label: str
    wall: float
    rounds: int
    applied: int
    trained: int | None  # local backend only
    staleness: float | None
    cpu: float | None = None  # this process's CPU seconds (local backend only: the whole run is in it)
    extra: dict[str, Any] = field(default_factory=dict)


def count_pool(server: Server) -> list[int]:
    """Wrap the server's pool to count the tasks it runs and its calls (FedBuff: one per lazy batch)."""
    counter, run = [0, 0], server.pool.run

    def counted(envelopes: Any, costs: Any) -> Any:
        counter[0] += len(envelopes)
        counter[1] += 1
        return run(envelopes, costs)

    server.pool.run = counted  # type: ignore[method-assign]
    return counter


def timed_run(config: RunConfig, data: Any, label: str, profile: int = 0) -> tuple[Run, str]:
    """Every round of `config` timed from the first to the last (start-up excluded); cProfile's top `profile`."""
    rows: list[dict[str, Any]] = []
    counter: list[int] | None = None
    text = ""
    if config.runtime.backend == "local":
        server = local_server(config, data)
        counter = count_pool(server)
        call = lambda method, *args: getattr(server, method)(*args)  # noqa: E731
        profiler = cProfile.Profile() if profile else None
        try:
            start, cpu_start = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            rows = [call("run_round", r, False) for r in range(1, config.rounds + 1)]
            if profiler:
                profiler.disable()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        finally:
            server.close()
        if profiler:
            text = profile_text(profiler, profile, wall)
    else:
        setup = server_setup(config, data, build_model_fn(config.model, data))
        with start_server(config, setup) as call:
            call("get_spec")  # the actors are up
            start = time.perf_counter()
            rows = [call("run_round", r, False) for r in range(1, config.rounds + 1)]
            wall, cpu = time.perf_counter() - start, None
    staleness = [r["staleness_mean"] for r in rows if r.get("staleness_mean") is not None]
    run = Run(label, wall, len(rows), sum(r["clients"] for r in rows), counter[0] if counter else None,
              sum(staleness) / len(staleness) if staleness else None, cpu,
              {"first": rows[0]["wall_seconds"], "calls": counter[1] if counter else None})
    return run, text


def profile_text(profiler: cProfile.Profile, top: int, wall: float) -> str:
    """cProfile's top functions by own time, and the share of the run inside local training."""
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    train = sum(v[3] for k, v in stats.stats.items() if k[0].endswith("fl/training.py") and k[2] == "train")
    loop = {k[2]: v[3] for k, v in stats.stats.items() if k[0].endswith("fl/async_loop.py")}
    out.write(f"local training (fl/training.py train, cumulative): {train:.2f} s of {wall:.2f} s wall "
              f"({100 * train / wall:.0f}%)\n")
    if loop:
        main = {name: loop[name] for name in ("_fill", "_arrive", "_train_pending", "_dispatch", "_publish")
                if name in loop}
        out.write("async loop, cumulative s: " + ", ".join(f"{k} {v:.2f}" for k, v in main.items()) + "\n")
    stats.sort_stats("tottime").print_stats(top)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip() and "Ordered by" not in line
                     and "List reduced" not in line and "function calls" not in line) + "\n"


def throughput_child(scale: Scale, backend: str, workers: int, repeats: int, profile: int) -> tuple[list[Run], str]:
    """FedAvg then FedBuff (`repeats` times) on one backend, with the data set built once; then the profiles."""
    torch.set_num_threads(1)
    sync = run_config(scale, scale.clients, "fedavg", scale.rounds, backend, workers)
    data = build_data(sync.data, sync.seed)
    warm_up(scale, data)
    if backend == "ray":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        from fl.ray_runtime import init_ray

        init_ray()
    runs: list[Run] = []
    for _ in range(repeats):
        for strategy, label in (("fedavg", f"FedAvg, {scale.buffer}/round"),
                                ("fedbuff", f"FedBuff, {scale.in_flight} in flight, K={scale.buffer}")):
            config = run_config(scale, scale.clients, strategy, scale.rounds, backend, workers)
            runs.append(timed_run(config, data, label)[0])
    text = ""
    if profile and backend == "local":
        rounds = max(2, scale.rounds // 2)
        for strategy in ("fedavg", "fedbuff"):
            config = run_config(scale, scale.clients, strategy, rounds, backend, workers)
            run, found = timed_run(config, data, strategy, profile)
            text += (f"\n-- cProfile, {strategy}, {rounds} rounds/versions, {run.applied} applied, "
                     f"{run.trained} trained, {run.wall:.1f} s wall (profiled) --\n{found}")
    if backend == "ray":
        import ray

        ray.shutdown()
    return runs, text


def span(values: list[float]) -> str:
    """"a" for one value, "a..b" (lowest..highest) for several."""
    return f"{min(values):.2f}" if len(set(values)) == 1 else f"{min(values):.2f}..{max(values):.2f}"


def bench_throughput(scale: Scale, backends: tuple[str, ...], workers: int, repeats: int, profile: int) -> None:
    print(f"\n== Throughput: {scale.clients:,} registered clients, {scale.rounds} versions (FedBuff) or rounds "
          f"(FedAvg), {scale.steps} local steps per update, MLP 60-{scale.hidden}-10, compute {COMPUTE} ==")
    print(f"{'backend':<16}{'run':<36}{'wall s':>8}{'CPU s':>8}{'applied':>9}{'trained':>9}{'applied/s':>11}"
          f"{'trained/s':>11}{'x sync':>8}{'stale':>7}{'1st row s':>10}{'pool calls':>11}")
    profiles = ""
    for backend in backends:
        where = "local" if backend == "local" else f"Ray, {workers} workers"
        runs, text = in_child(throughput_child, scale, backend, workers, repeats, profile)
        profiles += text
        base = [r for r in runs if r.label.startswith("FedAvg")]
        base_rate = sum(r.applied / r.wall for r in base) / len(base)
        for r in runs:
            rate = r.applied / r.wall
            trained, per_s = (f"{r.trained}", f"{r.trained / r.wall:.1f}") if r.trained is not None else ("-", "-")
            cpu = f"{r.cpu:.2f}" if r.cpu is not None else "-"
            stale = f"{r.staleness:.2f}" if r.staleness is not None else "-"
            print(f"{where:<16}{r.label:<36}{r.wall:>8.2f}{cpu:>8}{r.applied:>9}{trained:>9}{rate:>11.1f}{per_s:>11}"
                  f"{rate / base_rate:>8.2f}{stale:>7}{r.extra['first']:>10.2f}{r.extra['calls'] or '-':>11}")
        pairs = list(zip([r for r in runs if r.label.startswith("FedBuff")], base))
        ratio = {  # async / sync, per pair
            "applied_wall": [a.applied / a.wall / (s.applied / s.wall) for a, s in pairs],
            "applied_cpu": [a.applied / a.cpu / (s.applied / s.cpu) for a, s in pairs if a.cpu and s.cpu],
            "trained_wall": [a.trained / a.wall / (s.trained / s.wall) for a, s in pairs if a.trained and s.trained],
            "trained_cpu": [a.trained / a.cpu / (s.trained / s.cpu) for a, s in pairs
                            if a.trained and s.trained and a.cpu and s.cpu],
        }
        line = f"{where}: async/sync applied updates per wall second {span(ratio['applied_wall'])}"
        if ratio["applied_cpu"]:
            line += f", per CPU second {span(ratio['applied_cpu'])}"
        if ratio["trained_wall"]:
            line += f"; trained tasks per wall second {span(ratio['trained_wall'])}"
        if ratio["trained_cpu"]:
            line += f", per CPU second {span(ratio['trained_cpu'])}"
        print(line)
    print("applied: updates the server consumed (rows' clients); trained: tasks the pool ran. CPU s: the child "
          "process's CPU seconds (local backend; steadier than wall time on a shared machine). x sync: applied/s "
          "against the mean FedAvg applied/s of the same backend. stale: mean staleness of the applied updates. "
          "1st row s: the first round's or version's seconds (FedBuff's first version trains every task in flight; "
          "on Ray it also holds the fresh worker actors' one-off first-training cost). pool calls: the server's "
          "calls of its worker pool (local backend): one per round, or one per lazy batch of FedBuff's (a round trip "
          "on Ray).")
    if profiles:
        print(profiles)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.partition("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, local backend only (the smoke test)")
    parser.add_argument("--part", choices=("all", "memory", "throughput"), default="all")
    parser.add_argument("--registered", type=int, nargs="+", help="memory: registered clients of each configuration")
    parser.add_argument("--in-flight", type=int, help="FedBuff's concurrency")
    parser.add_argument("--buffer", type=int, help="FedBuff's K and FedAvg's clients per round")
    parser.add_argument("--versions", type=int, help="memory: versions per configuration")
    parser.add_argument("--clients", type=int, help="throughput: registered clients")
    parser.add_argument("--rounds", type=int, help="throughput: FedBuff versions and FedAvg rounds")
    parser.add_argument("--steps", type=int, help="local SGD steps per update")
    parser.add_argument("--no-ray", action="store_true", help="throughput on the local backend only")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="throughput: FedAvg/FedBuff pairs per backend")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile's top N functions (local)")
    parser.add_argument("--trace", type=int, default=0, metavar="N", help="memory: tracemalloc's top N lines")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    chosen = {"registered": tuple(args.registered) if args.registered else None, "in_flight": args.in_flight,
              "buffer": args.buffer, "versions": args.versions, "clients": args.clients, "rounds": args.rounds,
              "steps": args.steps}
    scale = dataclasses.replace(scale, **{k: v for k, v in chosen.items() if v is not None})
    if scale.in_flight > min(scale.registered) or scale.in_flight > scale.clients:
        parser.error(f"{scale.in_flight} in flight need at least as many registered clients")
    backends = tuple(b for b in scale.backends if not (args.no_ray and b == "ray"))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    start = time.perf_counter()
    if args.part in ("all", "memory"):
        bench_memory(scale, args.trace)
    if args.part in ("all", "throughput"):
        bench_throughput(scale, backends, args.workers, args.repeats, args.profile)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
