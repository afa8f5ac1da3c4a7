"""One Federation server under many concurrent clients on 127.0.0.1: calls per second, the server's CPU per call and
latency per call type, against a baseline run (by default 1 client) in the same process.

The server is the real one (a deployed TaskBoard behind transport.grpc_server.serve, on its own thread and event loop)
in this process, with every task posted up front: one per client and round, each round a published version. The
clients are grpc.aio coroutines in one child process, each on its own TCP connection: every client joins, then works
through its tasks (pull, fetch the task's version, push the parameters plus the task's seed). Afterwards each task is
taken from the board and checked to be its own client's answer, so a lost or mixed-up result fails the run instead
of being timed.

    python benchmarks/bench_server_load.py                       # 1000 clients x 3 rounds; baseline 1 client
    python benchmarks/bench_server_load.py --clients 5000 --rounds 5 --baseline 16
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy
import torch

from transport import framing, wire
from transport.auth import SESSION_KEY
from transport.board import TaskBoard
from transport.channel import Admission
from transport.codecs.base import Payload
from transport.codecs.cast import IdentityCodec
from transport.grpc_server import ServerLimits, serve
from transport.messages import TRAIN, Result, Task
from transport.proto import fl_pb2

CHUNK = 64 << 10
SERVICE = "/fl.Federation/"
CALLS = ("join", "pull", "fetch", "push")
DONE, WAIT = "done", "wait"
# grpc shares one TCP connection among the channels of a process to the same address unless each has its own pool
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


# The client: grpc.aio, one connection per client, every call timed.

class LoadClient:
    """One client on its own connection (grpc.aio, so thousands share one event loop): join, pull, fetch and push,
    with the session a deployed server gives; each call's seconds are appended to `seconds[call]`."""

    def __init__(self, address: str, client_id: int, timeout: float = 60.0) -> None:
        self.client_id, self.timeout = client_id, timeout
        self.seconds: dict[str, list[float]] = {call: [] for call in CALLS}
        self.channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        self._metadata: tuple[tuple[str, str], ...] = ()
        frame = fl_pb2.Frame.FromString
        self._join = self.channel.unary_unary(SERVICE + "Join", fl_pb2.JoinRequest.SerializeToString,
                                              fl_pb2.JoinReply.FromString)
        self._pull = self.channel.unary_stream(SERVICE + "PullTask", fl_pb2.TaskRequest.SerializeToString, frame)
        self._fetch = self.channel.unary_stream(SERVICE + "FetchParams", fl_pb2.ParamsRequest.SerializeToString, frame)
        self._push = self.channel.stream_unary(SERVICE + "PushResult", fl_pb2.Frame.SerializeToString,
                                               fl_pb2.PushReply.FromString)

    async def join(self) -> fl_pb2.JoinReply:
        """Join; later calls carry the session of the reply."""
        start = time.perf_counter()
        reply = await self._join(fl_pb2.JoinRequest(client_id=self.client_id), timeout=self.timeout)
        self.seconds["join"].append(time.perf_counter() - start)
        self._metadata = ((SESSION_KEY, reply.session),) if reply.session else ()
        return reply

    async def pull(self, wait_seconds: float = 0.0) -> tuple[int, Task] | str:
        """(task id, task) of this client's next task, or WAIT if none came within `wait_seconds`, or DONE."""
        request = fl_pb2.TaskRequest(client_id=self.client_id, wait_seconds=wait_seconds)
        frames = await self._frames("pull", self._pull(request, timeout=self.timeout + wait_seconds,
                                                       metadata=self._metadata))
        header = framing.read_header(iter(frames), ("task", "signal"))
        if header.WhichOneof("body") == "signal":
            return DONE if header.signal == fl_pb2.DONE else WAIT
        return wire.task_from_frame(*framing.from_frames(frames, ("task",)))

    async def fetch(self, version: int) -> Payload:
        """The whole global parameters of `version`."""
        request = fl_pb2.ParamsRequest(version=version, client_id=self.client_id)
        frames = await self._frames("fetch", self._fetch(request, timeout=self.timeout, metadata=self._metadata))
        return wire.params_from_frame(*framing.from_frames(frames, ("params",))).payload

    async def push(self, task_id: int, result: Result) -> int:
        """Send the result of task `task_id`; returns the task id the server stored."""
        frames = list(framing.to_frames(*wire.result_frame(result, task_id), CHUNK))
        start = time.perf_counter()
        reply = await self._push(iter(frames), timeout=self.timeout, metadata=self._metadata)
        self.seconds["push"].append(time.perf_counter() - start)
        return reply.task_id

    async def _frames(self, call: str, stream: grpc.aio.UnaryStreamCall) -> list[fl_pb2.Frame]:
        """Every frame of a response stream, the whole call timed as `call`."""
        start = time.perf_counter()
        frames = [frame async for frame in stream]
        self.seconds[call].append(time.perf_counter() - start)
        return frames

    async def close(self) -> None:
        await self.channel.close()


# The server side: a deployed board whose admission decodes identity-coded updates, every task posted up front.

def identity_payload(values: torch.Tensor) -> Payload:
    return IdentityCodec().encode(values, {})[0]


class LoadAdmission(Admission):
    """Client ids below `num_clients`; updates identity-coded float32 vectors of `num_floats` values."""

    def __init__(self, num_clients: int, num_floats: int) -> None:
        super().__init__(num_clients)
        self.num_floats = num_floats

    def upload_limit(self) -> int:
        return 4 * self.num_floats + 1024

    def admit(self, result: Result) -> Result:
        self.check_client(result.client_id)
        update, _ = IdentityCodec().decode(result.update, {})
        if update.shape != (self.num_floats,) or update.dtype != torch.float32:
            raise ValueError(f"update {tuple(update.shape)} {update.dtype}, expected ({self.num_floats},) float32")
        return dataclasses.replace(result, update=update.clone())


def global_params(version: int, num_floats: int) -> torch.Tensor:
    return torch.full((num_floats,), float(version))


def post_rounds(board: TaskBoard, num_clients: int, rounds: int, num_floats: int) -> dict[int, Task]:
    """Publish versions 1..rounds and post one task per client and version, each with its own seed; returns
    task id -> task. (A client's tasks queue up: it pulls the next one as soon as it has pushed the last.)"""
    tasks = {}
    for version in range(1, rounds + 1):
        board.publish(version, identity_payload(global_params(version, num_floats)))
        for client_id in range(num_clients):
            task = Task(TRAIN, version, client_id, seed=version * num_clients + client_id)
            tasks[board.post(task)] = task
    return tasks


def check_answers(board: TaskBoard, tasks: dict[int, Task], num_floats: int) -> None:
    """Every task answered, by its own client, with that client's update (the parameters plus the task's seed)."""
    for task_id, task in tasks.items():
        result = board.take(task_id, timeout=0)
        expected = global_params(task.version, num_floats) + task.seed
        if result.client_id != task.client_id or not torch.equal(result.update, expected):
            raise AssertionError(f"task {task_id} of client {task.client_id} came back wrong (from client "
                                 f"{result.client_id})")


# The client side, in a process of its own: every client joins, then works through its tasks.

@dataclass
class LoadRun:
    clients: int
    rounds: int
    seconds: float  # wall time from the first Join to the last push, as the clients see it
    latencies: dict[str, list[float]] = field(default_factory=dict)  # call -> seconds of every call
    server_cpu: float = 0.0  # CPU seconds of the server's process while the clients ran

    @property
    def calls(self) -> int:
        return sum(map(len, self.latencies.values()))


async def client_rounds(client: LoadClient, rounds: int) -> None:
    """`rounds` times: pull the next task, fetch the parameters of its version, push the parameters plus its seed."""
    for _ in range(rounds):
        pulled = await client.pull(wait_seconds=5.0)
        if isinstance(pulled, str):
            raise AssertionError(f"client {client.client_id} got {pulled!r} instead of a task")
        task_id, task = pulled
        params, _ = IdentityCodec().decode(await client.fetch(task.version), {})
        update = identity_payload(params + task.seed)
        stored = await client.push(task_id, Result(TRAIN, task.version, client.client_id, 1, {}, update=update))
        if stored != task_id:
            raise AssertionError(f"client {client.client_id}: the server stored task {stored}, not {task_id}")


async def drive(address: str, num_clients: int, rounds: int) -> LoadRun:
    """All clients join at once, then each works through its `rounds` tasks, all concurrently."""
    clients = [LoadClient(address, c) for c in range(num_clients)]
    try:
        start = time.perf_counter()
        await asyncio.gather(*(client.join() for client in clients))
        await asyncio.gather(*(client_rounds(client, rounds) for client in clients))
        seconds = time.perf_counter() - start
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    latencies = {call: [s for client in clients for s in client.seconds[call]] for call in CALLS}
    return LoadRun(num_clients, rounds, seconds, latencies)


def run_clients(address: str, num_clients: int, rounds: int) -> LoadRun:
    """The child process's work: `drive` in an event loop of its own."""
    return asyncio.run(drive(address, num_clients, rounds))


def run_load(num_clients: int, rounds: int, num_floats: int) -> LoadRun:
    """A fresh server with every task posted, `num_clients` clients in a child process, every answer checked."""
    board = TaskBoard(LoadAdmission(num_clients, num_floats), chunk_size=CHUNK, deployed=True, max_staleness=rounds)
    tasks = post_rounds(board, num_clients, rounds, num_floats)
    server, port = serve(board, "127.0.0.1:0", limits=ServerLimits(max_concurrent_calls=4 * num_clients + 64))
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            cpu = time.process_time()
            run = pool.submit(run_clients, f"127.0.0.1:{port}", num_clients, rounds).result()
            run.server_cpu = time.process_time() - cpu
    finally:
        server.stop(None)
    check_answers(board, tasks, num_floats)
    return run


# The table.

def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values`, interpolated linearly."""
    return float(numpy.quantile(values, q))


def print_table(run: LoadRun, baseline: LoadRun) -> None:
    """Calls per second and the server's CPU per call of each run, then p50/p99 per call type, with the load run's
    figures also as ratios to the baseline's."""
    base_rate = baseline.calls / baseline.seconds
    print(f"{'run':<26}{'calls':>8}{'wall s':>9}{'calls/s':>10}{'x base':>8}{'server CPU ms/call':>20}")
    for label, r in ((f"baseline, {baseline.clients} client(s)", baseline), (f"load, {run.clients} clients", run)):
        rate = r.calls / r.seconds
        print(f"{label:<26}{r.calls:>8}{r.seconds:>9.2f}{rate:>10.0f}{rate / base_rate:>8.2f}"
              f"{1e3 * r.server_cpu / r.calls:>20.2f}")
    print(f"\n{'call':<7}{'base n':>8}{'base p50 ms':>12}{'base p99 ms':>12}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'max ms':>9}{'x base p50':>11}{'x base p99':>11}")
    for call in CALLS:
        base, load = baseline.latencies[call], run.latencies[call]
        b50, b99 = 1e3 * quantile(base, 0.5), 1e3 * quantile(base, 0.99)
        p50, p99 = 1e3 * quantile(load, 0.5), 1e3 * quantile(load, 0.99)
        print(f"{call:<7}{len(base):>8}{b50:>12.2f}{b99:>12.2f}{len(load):>7}{p50:>9.2f}{p99:>9.2f}"
              f"{1e3 * max(load):>9.1f}{p50 / b50:>11.1f}{p99 / b99:>11.1f}")
    print(f"calls/s: every call (a Join per client, then a pull, a fetch and a push per round) / wall seconds from the "
          f"first Join to the last push. server CPU: the server process's CPU seconds (all its threads) while the "
          f"clients ran, per call. Latency: one call as its client sees it (pulls find their task posted); with every "
          f"client keeping one call in flight it is about clients / (calls/s) under load. Clients run in one child "
          f"process; the two processes share {os.cpu_count()} CPUs.")


def allow_open_files(count: int) -> bool:
    """Raise this process's soft limit on open files towards `count` (up to the hard limit; a child process inherits
    it); whether it allows `count` now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        soft = count if hard == resource.RLIM_INFINITY else min(count, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft == resource.RLIM_INFINITY or soft >= count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="concurrent clients of the load run (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="tasks per client in the load run (default 3)")
    parser.add_argument("--baseline", type=int, default=1, help="clients of the baseline run (default 1)")
    parser.add_argument("--floats", type=int, default=1000, help="float32 values in the model (default 1000)")
    args = parser.parse_args(argv)
    if not allow_open_files(2 * args.clients + 1024):  # the server holds a socket per client, as does the child
        parser.error(f"{args.clients} clients need about {2 * args.clients + 1024} open files; raise ulimit -Hn")
    baseline_rounds = max(args.rounds, 200 // args.baseline)  # enough calls for a p99
    print(f"grpcio {grpc.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs visible")
    print(f"\n== One deployed server on 127.0.0.1, a {4 * args.floats:,} B model: {args.clients} concurrent clients x "
          f"{args.rounds} rounds; baseline: {args.baseline} client(s) x {baseline_rounds} rounds ==")
    baseline = run_load(args.baseline, baseline_rounds, args.floats)
    run = run_load(args.clients, args.rounds, args.floats)
    print_table(run, baseline)


if __name__ == "__main__":
    main()
