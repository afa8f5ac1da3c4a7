"""An asynchronous strategy with real clients (`fl server`): the same loop as a simulation, on a real clock.

Time is seconds since the run started. Tasks go to joined clients on the gRPC board; results are applied in the order
they really arrive, with staleness counted in versions. A task whose version becomes too stale for the strategy is
withdrawn at once (its client is free for a new one and its late result is refused), and a task unanswered for
`timeout` seconds is dropped: its client is presumed gone and forgotten (it must join again), as is an idle client
whose session made no call for that long. When no client is left and none joins within `timeout` seconds, the run
ends with ClientsGone. Timers and delayed starts wait on the real clock.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch import Tensor

from fl.async_loop import AsyncLoop, Flight, TaskRunner, VersionRecord
from fl.clock import ARRIVE, DROP
from fl.compression import UplinkDecoder
from fl.deploy import POLL_SECONDS as CLIENT_POLL_SECONDS
from fl.errors import ClientsGone
from fl.timing import TaskTiming
from strategies.asynchronous.base import AsyncStrategy, Start
from transport.messages import Result, Task

POLL_SECONDS = 0.5  # how long one wait for a result lasts before the loop looks at its timers and clients again


class BoardTasks(TaskRunner):
    """Posts tasks on a deployed board; clients run them on their own machines and keep their own state."""

    def __init__(self, channel: Any, decoder: UplinkDecoder) -> None:
        self.channel, self.decoder = channel, decoder

    def post(self, task: Task) -> int:
        return self.channel.post(task)[0]

    def run(self, handles: list[Any]) -> list[tuple[Result, int]]:
        raise RuntimeError("deployed clients train their tasks themselves")

    def cancel(self, handle: int) -> None:
        self.channel.cancel((handle, -1))

    def forget(self, client: int) -> None:
        """A client presumed gone: it must join again before it gets another task."""
        self.channel.board.forget(client)

    def quiet_clients(self, seconds: float) -> list[int]:
        return self.channel.board.quiet_clients(seconds)

    def settle(self, result: Result, applied: bool) -> None:
        self.decoder.settle(result.client_id, applied)

    def first_result(self, task_ids: list[int], timeout: float) -> Result | None:
        taken = self.channel.board.take_first(task_ids, timeout)
        return None if taken is None else taken[1]

    def traffic(self, record: VersionRecord) -> tuple[dict[int, int], dict[int, int]]:
        return self.channel.traffic.take()


class RealTimeLoop(AsyncLoop):
    """The asynchronous loop with deployed clients; `next_version` blocks until a version is published."""

    def __init__(self, strategy: AsyncStrategy, num_clients: int, params: Tensor, publish: Any, runner: BoardTasks,
                 timing: TaskTiming, seed: int, timeout: float, max_seconds: float = 0.0) -> None:
        self.start_time, self.timeout = time.monotonic(), timeout
        self.connected = runner.channel.connected
        super().__init__(strategy, num_clients, params, publish, runner, timing, seed, max_seconds)

    def clock(self) -> float:
        return max(time.monotonic() - self.start_time, self.queue.now)

    def next_version(self) -> VersionRecord:
        idle_since = alone_since = self.clock()
        while self.clock() < self.limit:
            now = self.clock()
            if self.queue and self.queue.peek_time() <= now:
                record = self._step()
                if record is not None:
                    return record
                continue
            if self.flights or self.delayed or self.connected():
                alone_since = now  # before any is dropped or forgotten: a rejoin gets the whole timeout
            self._expire(now)
            self._forget_quiet()
            self._fill(now)  # clients may have joined
            if not (self.flights or self.delayed or self.connected()) and now - alone_since > self.timeout:
                raise ClientsGone(f"version {self.version + 1}: no client is left (each was dropped or went quiet) "
                                  f"and none joined again within {self.timeout:g} s")
            if self.flights or self.queue:
                idle_since = now
            elif now - idle_since > self.timeout and self.connected():
                break  # nothing in flight, and the clients there get nothing to do
            self._wait(min(self.queue.peek_time() - now, POLL_SECONDS))
        return self._end(self.clock())

    def _forget_quiet(self) -> None:
        """Forget the idle clients whose session made no call for `timeout` seconds (at least a few of their polls)."""
        for client in self.runner.quiet_clients(max(self.timeout, 2 * CLIENT_POLL_SECONDS)):
            if client not in self.flights and client not in self.delayed:
                self.runner.forget(client)

    def _wait(self, seconds: float) -> None:
        """Wait up to `seconds` for a result; an arrival is queued at the moment it is taken."""
        waiting = {flight.handle: client for client, flight in self.flights.items()}
        result = self.runner.first_result(list(waiting), seconds) if waiting else time.sleep(max(seconds, 0.0))
        if result is not None:
            self.flights[result.client_id].result = result
            self.queue.push(self.clock(), ARRIVE, result.client_id)

    def _idle(self) -> np.ndarray:
        joined = np.asarray(self.connected(), dtype=np.int64)
        return joined[~self.busy[joined]] if len(joined) else joined

    def _dispatch(self, start: Start, now: float) -> None:
        self._post(start, self._count_start(start.client_id, now), now)

    def _expire(self, now: float) -> None:
        """Drop the tasks unanswered for `timeout` seconds: their clients are presumed gone."""
        for client in [c for c, f in self.flights.items() if f.result is None and now - f.start_time > self.timeout]:
            self._withdraw(client, now)
            self.runner.forget(client)
            self.record.dropped += 1
            self._log(now, DROP, client)

    def _published(self, now: float) -> None:
        """Withdraw the tasks the new version made staler than the strategy accepts."""
        limit = self.strategy.max_staleness
        if limit is None:
            return
        for client in [c for c, f in self.flights.items() if f.result is None and self.version - f.task.version > limit]:
            self._withdraw(client, now)
            self.record.stale += 1
            self._log(now, "stale", client)

    def _withdraw(self, client: int, now: float) -> Flight:
        flight = self.flights.pop(client)
        self.busy[client] = False
        self.runner.cancel(flight.handle)
        self._release(flight.task.version)
        return flight
