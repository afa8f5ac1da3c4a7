"""The asynchronous loop on the virtual clock: clients start and arrive one at a time, and versions are published.

At most `strategy.concurrency` clients are in flight (a closed loop): after every event, free slots go to idle online
clients that the strategy selects. Events are consumed one at a time in (time, kind, client) order, as the papers'
schedulers do (Fraboni et al. 2023, clients_schedule.py: time, then client id), so a client whose arrival publishes a
version restarts on that version before the next arrival of the same instant. The end of a task that took no time
(no device profiles) is the exception: it fills no slot while other events of that instant remain, or, ordered by id,
the lowest such client would arrive again and again before the others. A started task downloads the current version,
trains on that snapshot, and arrives when the cost model says, or fails midway (dropout, offline at finish). The
strategy sees each arrival with its staleness (versions published since the client started) and may publish a
version; its timers serve interval methods.

Training is lazy and parallel: posted tasks wait until one of them is needed, then every waiting task trains in one
batch on the pool, each from its own snapshot and seed, so batch sizes, worker counts and channels change nothing.
A client's n-th task is seeded as its task in round n of a synchronous run. Memory grows with the tasks in flight
(their snapshots and results) and one integer per registered client.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fl.clock import ARRIVE, DROP, START, TIMER, WAKE, EventQueue
from fl.divergence import DivergenceWatch
from fl.seeding import ASYNC_SELECT, TRAINING, derive_rng, derive_seed
from fl.timing import TaskTiming
from strategies.asynchronous.base import Arrival, AsyncStrategy, Start, check_concurrency
from strategies.base import Instruction
from transport.messages import DIVERGED, TRAIN, Result, Task

STALL_EVENTS = 10_000  # events in a row that bring no update (timers while tasks are in flight not counted)


class TaskRunner(ABC):
    """How the loop's tasks run: the server's channel and worker pool, or a test's closed form."""

    @abstractmethod
    def post(self, task: Task) -> Any:
        """Hand a task over when it starts; returns a handle for `run` or `cancel`."""

    @abstractmethod
    def run(self, handles: list[Any]) -> list[tuple[Result, int]]:
        """Train posted tasks (in parallel where possible); each one's result and the bytes it uploaded, in order."""

    def cancel(self, handle: Any) -> None:
        """A posted task that will never be trained (its result could not be used)."""

    def settle(self, result: Result, applied: bool) -> None:
        """The loop consumed `result`: write its client state when applied, drop it otherwise."""


@dataclass
class Flight:
    """A started task: posted unless it fails (then it is never trained and never arrives)."""

    task: Task | None
    start_time: float
    handle: Any = None
    result: Result | None = None
    up_bytes: int = 0
    skipped: bool = False  # already too stale when its batch trained: never trained


@dataclass
class VersionRecord:
    """What happened from one published version to the next (`ended`: the run stopped before publishing one)."""

    version: int = 0
    time: float = 0.0
    staleness: list[int] = field(default_factory=list)  # of the applied arrivals
    loss_sum: float = 0.0
    samples: int = 0
    dropped: int = 0
    stale: int = 0  # arrivals older than the strategy's max_staleness, not applied
    diverged: int = 0  # tasks whose training diverged (fl/divergence.py)
    refused: int = 0  # results whose values the server refused
    clients: list[int] = field(default_factory=list)  # of the applied arrivals, in order
    in_flight: int = 0
    up_by_client: dict[int, int] = field(default_factory=dict)  # bytes of the results consumed (applied or stale)
    ended: bool = False

    def add(self, arrival: Arrival) -> None:
        self.clients.append(arrival.client_id)
        self.staleness.append(arrival.staleness)
        self.loss_sum += arrival.metrics["loss"] * arrival.num_samples
        self.samples += arrival.num_samples

    def uploaded(self, client: int, num_bytes: int) -> None:
        self.up_by_client[client] = self.up_by_client.get(client, 0) + num_bytes


class AsyncLoop:
    """Runs an asynchronous strategy on the virtual clock; `next_version` advances to the next published version."""

    def __init__(self, strategy: AsyncStrategy, num_clients: int, params: Tensor, publish: Any, runner: TaskRunner,
                 timing: TaskTiming, seed: int, max_virtual_seconds: float = 0.0) -> None:
        """`publish(params) -> version` makes parameters current for the tasks posted next."""
        self.strategy, self.runner, self.timing, self.seed = strategy, runner, timing, seed
        self.concurrency = check_concurrency(strategy.concurrency, num_clients)
        self.limit = max_virtual_seconds if max_virtual_seconds > 0 else math.inf
        self._publish_params = publish
        self.queue = EventQueue()
        self.flights: dict[int, Flight] = {}
        self.delayed: dict[int, Start] = {}
        self.busy = np.zeros(num_clients, dtype=bool)  # in flight or waiting to start
        self.tasks_started = np.zeros(num_clients, dtype=np.int64)
        self.pending: list[int] = []  # clients whose posted task has not trained yet
        self.snapshots: dict[int, list[Any]] = {}  # version -> [params, tasks in flight on it]
        self.events: list[tuple[int, float, str, int]] = []  # (row, virtual time, kind, client id)
        self.histogram: Counter[int] = Counter()  # staleness of the applied arrivals
        self.fills, self.quiet, self.timer, self.wake = 0, 0, None, None
        self.params, self.version = params.detach().clone(), publish(params)
        self.record = VersionRecord()
        self.rows = 0
        self.made_by: dict[int, list[int]] = {}  # version -> the clients whose updates made it
        self.divergence = DivergenceWatch(self.concurrency)
        self._after_event(0.0)

    @property
    def now(self) -> float:
        return self.queue.now

    def next_version(self) -> VersionRecord:
        """Consume events until a version is published; a record with `ended` when the clock reaches
        `max_virtual_seconds` or nothing is left to happen."""
        while self.queue and self.queue.peek_time() <= self.limit and self.quiet <= STALL_EVENTS:
            record = self._step()
            if record is not None:
                return record
        if self.quiet > STALL_EVENTS:
            warnings.warn(f"the run ends: {STALL_EVENTS} events in a row brought no update (does every task fail, "
                          f"or does {type(self.strategy).__name__} start nobody?)", RuntimeWarning, stacklevel=2)
        return self._end(min(self.limit, self.queue.peek_time()) if self.queue else self.now)

    def _step(self) -> VersionRecord | None:
        """Handle the next event; the record of the version it published, if any."""
        event = self.queue.pop()
        flight = self.flights.get(event.client_id) if event.kind in (ARRIVE, DROP) else None
        took_no_time = flight is not None and flight.start_time == event.time
        new_params = self._handle(event.kind, event.client_id, event.time)
        record = self._publish(new_params) if new_params is not None else None
        if record is not None:
            self._published(event.time)
        self._after_event(event.time, wait=took_no_time)
        if record is not None:
            record.in_flight = self.in_flight
        return record

    def _published(self, now: float) -> None:
        """A version was just published (before free slots are filled)."""

    def _end(self, time: float) -> VersionRecord:
        """The record that ends the run at `time`."""
        self.record.ended, self.record.time, self.record.in_flight = True, time, self.in_flight
        return self.record

    @property
    def in_flight(self) -> int:
        """Tasks started or waiting to start."""
        return len(self.flights) + len(self.delayed)

    def _handle(self, kind: str, client: int, now: float) -> Tensor | None:
        if kind != TIMER or not self.flights:
            self.quiet += 1
        if kind == ARRIVE:
            return self._arrive(client, now)
        if kind == DROP:
            del self.flights[client]
            self.busy[client] = False
            self.record.dropped += 1
            self._log(now, DROP, client)
        elif kind == START:
            self._dispatch(self.delayed.pop(client), now)
        elif kind == TIMER and now == self.timer:
            self.timer = None
            self._log(now, TIMER, -1)
            return self.strategy.on_timer(now, self.params.clone())
        elif kind == WAKE and now == self.wake:
            self.wake = None
        return None

    def _arrive(self, client: int, now: float) -> Tensor | None:
        if self.flights[client].result is None and not self.flights[client].skipped:
            self._train_pending()
        flight = self.flights.pop(client)
        self.busy[client] = False
        self.quiet = 0
        task, result = flight.task, flight.result
        params = self._release(task.version)
        staleness = self.version - task.version
        limit = self.strategy.max_staleness
        self.record.uploaded(client, flight.up_bytes)
        if result is not None and result.kind != TRAIN:
            return self._failed(result, now)
        if flight.skipped or (limit is not None and staleness > limit):
            if result is not None:
                self.runner.settle(result, applied=False)
            self.record.stale += 1
            self._log(now, "stale", client)
            return None
        self.runner.settle(result, applied=True)
        self.divergence.add(f"round {self.rows + 1}", client, TRAIN, ())
        arrival = Arrival(client, result.update, result.num_samples, result.metrics, staleness, task.version,
                          flight.start_time, now, params, result.tensors)
        self.record.add(arrival)
        self.histogram[staleness] += 1
        self._log(now, ARRIVE, client)
        return self.strategy.on_arrival(arrival, self.params.clone())

    def _failed(self, result: Result, now: float) -> None:
        """A task that brought no update: its training diverged, or the server refused its values."""
        self.runner.settle(result, applied=False)
        if result.kind == DIVERGED:
            self.record.diverged += 1
        else:
            self.record.refused += 1
        self._log(now, result.kind, result.client_id)
        self.divergence.add(f"round {self.rows + 1}", result.client_id, result.kind,
                            self.made_by.get(result.version, ()))

    def _publish(self, new_params: Tensor) -> VersionRecord:
        if not torch.isfinite(new_params).all():
            raise FloatingPointError(f"version {self.version + 1}: the global model holds NaN or Inf "
                                     f"(try a smaller learning rate)")
        self.params = new_params.detach().clone()
        self.version = self._publish_params(self.params)
        record, self.record = self.record, VersionRecord()
        record.version, record.time = self.version, self.now
        self.made_by[self.version] = record.clients
        self.rows += 1
        self.quiet = 0
        return record

    def _after_event(self, now: float, wait: bool = False) -> None:
        """Fill free slots before the next event (`wait`: once no event of this time is left), then (re)arm the
        strategy's timer."""
        if not wait or self.queue.peek_time() > now:
            self._fill(now)
        when = self.strategy.next_timer()
        if when is not None and when != self.timer:
            if when < now:
                raise ValueError(f"{type(self.strategy).__name__}.next_timer() = {when} is before the clock's {now}")
            self.timer = when
            self.queue.push(when, TIMER, -1)

    def _fill(self, now: float) -> None:
        slots = self.concurrency - self.in_flight
        if slots <= 0:
            return
        idle = self._idle()
        self.fills += 1
        online = self.timing.online_idle(idle, now, self.fills)
        starts = self.strategy.select(now, online, slots, derive_rng(self.seed, ASYNC_SELECT, self.fills)) \
            if len(online) else []
        chosen = [start.client_id for start in starts]
        if len(chosen) > slots or len(set(chosen)) != len(chosen) or not _members(chosen, online):
            raise ValueError(f"{type(self.strategy).__name__}.select must start at most {slots} distinct idle "
                             f"online clients, got {chosen}")
        for start in starts:
            self.busy[start.client_id] = True
            if start.delay > 0:
                self.delayed[start.client_id] = start
                self.queue.push(now + start.delay, START, start.client_id)
            else:
                self._dispatch(start, now)
        if not starts and not len(online) and len(idle) and self.wake is None:
            when = self.timing.next_online(idle, now)
            if math.isfinite(when) and (when > now or not self.flights):
                self.wake = when
                self.queue.push(when, WAKE, -1)

    def _idle(self) -> np.ndarray:
        """The clients that could start a task: none in flight (or waiting to start), ascending."""
        return np.flatnonzero(~self.busy)

    def _dispatch(self, start: Start, now: float) -> None:
        """Start a client's task on the current version: posted and placed on the clock, or failing midway."""
        client = start.client_id
        number = self._count_start(client, now)
        attempt = self.timing.attempt(number, Instruction(client, dict(start.config)), now)
        if attempt.fails_at is not None:
            self.flights[client] = Flight(None, now)
            self.queue.push(now + attempt.fails_at, DROP, client)
            return
        self._post(start, number, now)
        self.timing.downloaded([client])
        self.pending.append(client)
        self.queue.push(now + attempt.seconds, ARRIVE, client)

    def _count_start(self, client: int, now: float) -> int:
        """Log a client's start; returns which of its tasks this is (1, 2, ...)."""
        self.tasks_started[client] += 1
        self._log(now, "start", client)
        return int(self.tasks_started[client])

    def _post(self, start: Start, number: int, now: float) -> None:
        """Post a client's task on the current version, seeded as its task in round `number` of a synchronous run."""
        client = start.client_id
        task = Task(TRAIN, self.version, client, derive_seed(self.seed, number, client, TRAINING), dict(start.config))
        self.flights[client] = Flight(task, now, self.runner.post(task))
        self.snapshots.setdefault(self.version, [self.params, 0])[1] += 1

    def _train_pending(self) -> None:
        """Train every posted task that has not trained yet, in one batch; tasks that are already too stale to be
        applied are cancelled instead."""
        limit = self.strategy.max_staleness
        live = []
        for client in self.pending:
            flight = self.flights[client]
            if limit is not None and self.version - flight.task.version > limit:
                flight.skipped = True
                self.runner.cancel(flight.handle)
            else:
                live.append(client)
        self.pending = []
        for client, (result, up_bytes) in zip(live, self.runner.run([self.flights[c].handle for c in live])):
            if result.client_id != client:
                raise RuntimeError(f"the pool returned client {result.client_id}'s result for client {client}")
            self.flights[client].result, self.flights[client].up_bytes = result, up_bytes

    def _release(self, version: int) -> Tensor:
        """The parameters of `version`, forgotten once no task in flight started from them."""
        snapshot = self.snapshots[version]
        snapshot[1] -= 1
        if snapshot[1] == 0:
            del self.snapshots[version]
        return snapshot[0]

    def _log(self, now: float, kind: str, client: int) -> None:
        self.events.append((self.rows + 1, now, kind, client))


def _members(chosen: list[int], ascending: np.ndarray) -> bool:
    """Whether every chosen id is in the ascending array."""
    where = np.searchsorted(ascending, chosen)
    return bool(np.all(where < len(ascending)) and np.all(ascending[np.minimum(where, len(ascending) - 1)] == chosen))
