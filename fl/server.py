"""The server's round loop: configure, post tasks, stream replies into the strategy, evaluate.

The same object runs in the caller's process (in-process channel and pool) or inside a Ray actor (Ray object
channel, pool of worker actors); results never depend on which.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor

from fl.async_deploy import BoardTasks, RealTimeLoop
from fl.async_loop import AsyncLoop
from fl.async_server import PoolTasks, version_row
from fl.clock import RoundSchedule
from fl.models import ModelFn
from fl.params import ParamSpec
from fl.pool import WorkerPool
from fl.seeding import AVAILABILITY, CODEC, EVALUATION, INIT, SAMPLING, TRAINING, derive_rng, derive_seed
from fl.state_store import ClientStateStore
from fl.compression import Downlink, UplinkDecoder
from fl.divergence import check_divergence
from fl.timing import TaskTiming
from fl.training import UPDATE_DTYPES, TrainConfig, evaluate
from fl.validation import ResultAdmission
from fl.worker import WorkerSetup, as_tensor, resolve_device
from simulations.availability import available_clients
from simulations.federated_data import FederatedData
from simulations.profiles import DeviceProfiles
from strategies.asynchronous.base import AsyncStrategy
from strategies.base import Federation, Reply, SyncStrategy
from transport.channel import Channel, Endpoint
from transport.codecs.registry import make_codec
from transport.messages import DIVERGED, EVALUATE, REFUSED, TRAIN, Result, Task

PoolFactory = Callable[[WorkerSetup, Endpoint], WorkerPool]
ChannelFactory = Callable[[], Channel]  # a factory: a gRPC channel's server must start where the Server runs


class StrategyConfig(Protocol):
    def build(self, federation: Federation) -> SyncStrategy | AsyncStrategy: ...


@dataclass
class ServerSetup:
    """What the server needs; picklable so that a Ray actor can receive it."""

    model_fn: ModelFn
    data: FederatedData
    strategy: StrategyConfig
    train_config: TrainConfig
    seed: int = 0
    per_round: int = 10
    availability: np.ndarray | None = None  # per-client probability of being reachable in a round; None: always
    eval_every: int = 1  # central evaluation every N rounds (0: only after the last round)
    federated_eval_every: int = 0  # federated evaluation on clients' test splits every N rounds (0: never)
    federated_eval_clients: int = 10
    device: str = "auto"
    threads: int = 1
    uplink: str = "identity"  # codec spec for client updates
    downlink: str = "identity"  # codec spec for the broadcast of the global parameters
    clients_keep_state: bool = False  # deployment: clients keep their own state, and results may carry none
    devices: DeviceProfiles | None = None  # per-client speeds, bandwidths, availability; None: instantaneous
    deadline: float = 0.0  # virtual seconds a round waits for its clients (0: no deadline)
    over_select: float = 1.0  # select ceil(per_round * over_select) clients, keep the first per_round to arrive
    max_virtual_seconds: float = 0.0  # an asynchronous run ends when its clock reaches this (0: never)
    max_update_norm: float = 0.0  # security.max_update_norm (fl/bounds.py; 0: no bound)


class Server:
    def __init__(self, setup: ServerSetup, make_channel: ChannelFactory, make_pool: PoolFactory) -> None:
        torch.set_num_threads(setup.threads)
        self.setup = setup
        torch.manual_seed(derive_seed(setup.seed, INIT))
        self.device = resolve_device(setup.device)
        self.model = setup.model_fn().to(self.device)
        self.spec = ParamSpec.from_module(self.model)
        self.global_params = self.spec.flatten(self.model).cpu()
        self.version = 0  # of the last published global parameters
        self._unpublished = True  # a commit changed the global parameters since the last broadcast
        self.events: list[tuple[int, float, str, int]] = []  # (round, virtual time, kind, client id)
        data = setup.data
        selected = min(math.ceil(setup.per_round * setup.over_select), data.num_clients)
        federation = Federation(data.num_clients, selected, self.spec.num_params, self.spec.num_trainable,
                                self.global_params.dtype, tuple(int(n) for n in data.train_sizes()))
        self.strategy = setup.strategy.build(federation)
        self.store = ClientStateStore()
        update_dtype = UPDATE_DTYPES[setup.train_config.update_dtype]
        self.decoder = UplinkDecoder(make_codec(setup.uplink), self.spec.num_params, (update_dtype,))
        self.channel = make_channel()
        self.admission = ResultAdmission(data.train_sizes(), data.test_sizes(), self.decoder,
                                         self.strategy.reply_tensors, accept_state=not setup.clients_keep_state,
                                         max_update_norm=setup.max_update_norm)
        self.channel.admit_with(self.admission)
        self.made_by: list[int] = []  # the clients whose updates the last commit aggregated into the global model
        self.downlink = Downlink(make_codec(setup.downlink))
        reply_bytes = sum(spec.nbytes for spec in self.strategy.reply_tensors.values())
        upload_bytes = self.decoder.codec.payload_nbytes(self.spec.num_params, update_dtype) + reply_bytes
        self.timing = TaskTiming(setup.devices, setup.seed, data.train_sizes(), setup.train_config, upload_bytes)
        self.sizes = data.train_sizes()
        self.test_x, self.test_y = as_tensor(data.test_x, self.device), as_tensor(data.test_y, self.device)
        worker_setup = WorkerSetup(setup.model_fn, data, setup.train_config, self.strategy.client_algorithm,
                                   setup.device, setup.threads, setup.uplink, setup.max_update_norm)
        self.pool = make_pool(worker_setup, self.channel.endpoint())
        self.loop: AsyncLoop | None = None  # an asynchronous strategy's loop, started by the first version

    @property
    def is_async(self) -> bool:
        return isinstance(self.strategy, AsyncStrategy)

    def get_global(self) -> Tensor:
        return self.global_params

    def get_spec(self) -> ParamSpec:
        return self.spec

    def get_events(self) -> list[tuple[int, float, str, int]]:
        return self.loop.events if self.loop is not None else self.events

    def get_staleness(self) -> dict[int, int]:
        """How many applied updates had each staleness (an asynchronous run; empty otherwise)."""
        return dict(sorted(self.loop.histogram.items())) if self.loop is not None else {}

    def run_round(self, round: int, evaluate_now: bool = False) -> dict[str, Any]:
        """Dispatch, collect and commit one round on the virtual clock; evaluate when due (or when `evaluate_now`).
        Returns the round's metrics. A round that fails writes nothing: parameters, client state, decoder state and
        the clock stay as they were. An asynchronous strategy's round is one published version."""
        start = time.perf_counter()
        if self.is_async:
            return self._finish_row(round, self._run_version(round), evaluate_now, start)
        schedule, unavailable, tasks, receipts = self._dispatch(round)
        tally, staged = _Tally(), {}
        try:
            new_global, server_metrics = self._collect(round, tasks, receipts, tally, staged)
        except BaseException:
            self.decoder.discard()
            self.channel.traffic.take()  # the failed round's bytes are not the next round's
            raise
        check_divergence(f"round {round}", tally.outcomes, self.made_by)
        self._commit(round, schedule, new_global, staged, tally.applied)
        metrics = self._round_metrics(round, schedule, unavailable, tally, server_metrics)
        return self._finish_row(round, metrics, evaluate_now, start)

    def _finish_row(self, round: int, metrics: dict[str, Any], evaluate_now: bool, start: float) -> dict[str, Any]:
        """Mark the row that ends the run (the clock reached `max_virtual_seconds`, or an asynchronous loop has
        nothing left to do); evaluate when due, and always at the end; time the row."""
        limit = self.setup.max_virtual_seconds
        if limit > 0 and metrics["virtual_time"] >= limit:
            metrics["ended"] = True
        every = self.setup.eval_every
        if evaluate_now or metrics.get("ended") or (every > 0 and round % every == 0):
            metrics.update(self.evaluate_central())
        every = self.setup.federated_eval_every
        if every > 0 and round % every == 0:
            metrics.update(self.evaluate_federated(round))
        metrics["wall_seconds"] = time.perf_counter() - start
        return metrics

    def _run_version(self, round: int) -> dict[str, Any]:
        """Advance the asynchronous loop to its next published version (started on the first call)."""
        if self.loop is None:
            self.channel.keep_versions(self.strategy.max_staleness)
            num_clients, seed, limit = self.setup.data.num_clients, self.setup.seed, self.setup.max_virtual_seconds
            if self.channel.connected() is None:
                self.tasks = PoolTasks(self.channel, self.pool, self.store, self.decoder, self.sizes)
                self.loop = AsyncLoop(self.strategy, num_clients, self.global_params, self._publish_new, self.tasks,
                                      self.timing, seed, limit)
            else:  # deployed clients: the real clock
                self.tasks = BoardTasks(self.channel, self.decoder)
                self.loop = RealTimeLoop(self.strategy, num_clients, self.global_params, self._publish_new, self.tasks,
                                         self.timing, seed, self.channel.settings.timeout_seconds, limit)
        record = self.loop.next_version()
        self.global_params = self.loop.params
        return version_row(round, record, *self.tasks.traffic(record))

    def _publish_new(self, params: Tensor) -> int:
        self.global_params, self._unpublished = params.detach().clone(), True
        return self._publish()

    def _dispatch(self, round: int) -> tuple[RoundSchedule, int, list[Task], Iterator[Any]]:
        """Choose the clients among those online, publish the global parameters, place every task on the virtual
        clock, and post the tasks of the clients the round keeps, in the order they arrive."""
        seed = self.setup.seed
        candidates = self._available(round)
        online = self.timing.online(round, candidates)
        instructions = self.strategy.configure(round, self.global_params.clone(), online,
                                               derive_rng(seed, round, SAMPLING))
        version = self._publish()
        keep = self.setup.per_round if self.setup.over_select > 1 else len(instructions)
        schedule = self.timing.schedule(round, instructions, keep, self.setup.deadline)
        chosen = {instruction.client_id: instruction for instruction in instructions}
        tasks = [Task(TRAIN, version, c, derive_seed(seed, round, c, TRAINING), chosen[c].config, chosen[c].tensors,
                      self.store.get(c)) for c in schedule.kept]
        receipts = self.pool.run([self.channel.post(t) for t in tasks], [float(self.sizes[t.client_id]) for t in tasks])
        return schedule, len(candidates) - len(online), tasks, receipts

    def _collect(self, round: int, tasks: list[Task], receipts: Iterator[Any], tally: "_Tally",
                 staged: dict[int, dict[str, Tensor]]) -> tuple[Tensor | None, dict[str, float]]:
        """Stream the results into the strategy, staging their client state; the new global parameters (None for
        a round without an update to aggregate, which keeps the model). Failed tasks (diverged or refused) are
        tallied, never aggregated."""
        replies = self._replies(receipts, tally, staged)
        first = next(replies, None)
        if first is None:
            return None, {}
        new_global, server_metrics = self.strategy.aggregate(round, self.global_params.clone(),
                                                             itertools.chain([first], replies))
        if tally.count != len(tasks):
            raise RuntimeError(f"{type(self.strategy).__name__}.aggregate read {tally.count} of {len(tasks)} replies")
        if not torch.isfinite(new_global).all():
            raise FloatingPointError(f"round {round}: the global model holds NaN or Inf (try a smaller learning rate)")
        return new_global, server_metrics

    def _commit(self, round: int, schedule: RoundSchedule, new_global: Tensor | None,
                staged: dict[int, dict[str, Tensor]], applied: list[int]) -> None:
        """Write what the round changed: the clock and its events, client state, the uplink decoder's state, the
        global parameters (a copy, so that no tensor a strategy keeps can change them later)."""
        self.timing.advance(schedule)
        self.events += [(round, *event) for event in schedule.events]
        for client_id, state in staged.items():
            self.store.put(client_id, state)
        self.decoder.commit(schedule.kept)
        if new_global is not None:
            self.global_params, self._unpublished = new_global.detach().clone(), True
            self.made_by = applied

    def _round_metrics(self, round: int, schedule: RoundSchedule, unavailable: int, tally: "_Tally",
                       server_metrics: dict[str, float]) -> dict[str, Any]:
        down, up = self.channel.traffic.take()
        metrics: dict[str, Any] = {
            "round": round,
            "clients": len(tally.applied),
            "diverged": tally.failed(DIVERGED),
            "refused": tally.failed(REFUSED),
            "train_loss": tally.mean_loss(),
            "bytes_up": sum(up.values()),
            "bytes_down": sum(down.values()),
            "bytes_by_client": {str(c): [down.get(c, 0), up.get(c, 0)] for c in sorted(down.keys() | up.keys())},
            **server_metrics,
            "virtual_time": schedule.end,
        }
        if self.setup.devices is not None:
            metrics.update(round_seconds_virtual=schedule.end - schedule.start, dropped=len(schedule.dropped),
                           late=len(schedule.late), unavailable=unavailable)
        return metrics

    def evaluate_central(self) -> dict[str, float]:
        """Loss and accuracy of the global model on the central test set (the union of client test splits)."""
        self.spec.load(self.model, self.global_params.to(self.device))
        loss_sum, correct, count = evaluate(self.model, self.test_x, self.test_y)
        return {"test_loss": loss_sum / max(count, 1), "test_accuracy": correct / max(count, 1)}

    def evaluate_federated(self, round: int) -> dict[str, float]:
        """Clients evaluate the global model on their own test splits; sample-weighted loss and accuracy."""
        rng = derive_rng(self.setup.seed, round, EVALUATION)
        num_clients = self.setup.data.num_clients
        picked = np.sort(rng.choice(num_clients, size=min(self.setup.federated_eval_clients, num_clients), replace=False))
        version = self._publish()
        envelopes = [self.channel.post(Task(EVALUATE, version, int(c), 0)) for c in picked]
        self.timing.downloaded(picked.tolist())
        loss_sum = correct = count = 0.0
        for receipt in self.pool.run(envelopes, [1.0] * len(envelopes)):
            result = self.channel.receive(receipt)
            if result.kind != EVALUATE:  # refused
                continue
            loss_sum += result.metrics["loss_sum"]
            correct += result.metrics["correct"]
            count += result.num_samples
        down, up = self.channel.traffic.take()
        return {"fed_test_loss": loss_sum / max(count, 1), "fed_test_accuracy": correct / max(count, 1),
                "fed_eval_bytes_down": sum(down.values()), "fed_eval_bytes_up": sum(up.values())}

    def close(self, abort_reason: str = "") -> None:
        """Release the pool and the channel; `abort_reason`: the run failed, and why (deployed clients hear it)."""
        self.pool.close()
        self.channel.close(abort_reason)

    def _publish(self) -> int:
        """Broadcast the global parameters as a new version when a commit changed them since the last broadcast;
        returns the version. Clients receive the downlink codec's replica of them."""
        if self._unpublished:
            self.version += 1
            seed = derive_seed(self.setup.seed, self.version, CODEC)
            broadcast = self.downlink.broadcast(self.version, self.global_params, seed)
            self.channel.publish(self.version, broadcast)
            self.admission.published(self.version, self.global_params)
            self.timing.published(self.version, broadcast)
            self._unpublished = False
        return self.version

    def _available(self, round: int) -> np.ndarray:
        connected = self.channel.connected()
        if connected is not None:
            return np.asarray(connected, dtype=np.int64)
        if self.setup.availability is None:
            return np.arange(self.setup.data.num_clients)
        return available_clients(self.setup.availability, derive_rng(self.setup.seed, round, AVAILABILITY))

    def wait_for_clients(self, count: int, timeout: float) -> list[int]:
        """Deployment: block until `count` clients have joined."""
        return self.channel.board.wait_for_clients(count, timeout)

    def _replies(self, receipts: Iterator[Any], tally: "_Tally", staged: dict[int, dict[str, Tensor]]
                 ) -> Iterator[Reply]:
        for receipt in receipts:
            result: Result = self.channel.receive(receipt)
            tally.add(result)
            if result.kind != TRAIN:
                continue
            if result.state:
                staged[result.client_id] = result.state
            yield Reply(result.client_id, result.update, result.num_samples, result.metrics, result.tensors)


class _Tally:
    """Counts results, the clients they come from and their sample-weighted training loss as they stream past."""

    def __init__(self) -> None:
        self.count, self.samples, self.loss_sum = 0, 0, 0.0
        self.outcomes: list[tuple[int, str]] = []  # (client id, result kind) in arrival order
        self.applied: list[int] = []  # the clients whose updates went to the strategy

    def add(self, result: Result) -> None:
        self.count += 1
        self.outcomes.append((result.client_id, result.kind))
        if result.kind == TRAIN:
            self.applied.append(result.client_id)
            self.samples += result.num_samples
            self.loss_sum += result.metrics["loss"] * result.num_samples

    def failed(self, kind: str) -> int:
        """How many results were of `kind` (DIVERGED or REFUSED)."""
        return sum(k == kind for _, k in self.outcomes)

    def mean_loss(self) -> float | None:
        """The sample-weighted mean training loss (None when no client replied)."""
        return self.loss_sum / self.samples if self.samples else None
