"""Runs an asynchronous strategy on the real event loop (fl/async_loop.py) with one-dimensional quadratic clients.

Client i has f_i(x) = 0.5 (x - centers[i])^2 and runs local gradient descent x <- x - lr (x - c_i) from the version
it downloaded, for `steps` steps (a Start's config may set "steps" and "lr"), through the strategy's client hook. A
task takes seconds_per_step[i] * steps virtual seconds after its start (a Start's delay comes first); every client is
always online and never drops out; a reply carries samples[i] samples (default 1). Everything is float64.

Semantics of the loop, for hand traces: events at equal times are handled arrivals first, then timers, then delayed
starts, and by client id; after each event the loop publishes the parameters the strategy returned (if any), fills
free slots through `select` (a client that arrived is idle again and starts on the newest version, before the next
arrival of the same instant; after a task that took no time, only once the instant's other events are handled), and
asks `next_timer`. The run stops after `versions` published versions (not counting the initial one) or when nothing
is left to happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from fl.async_loop import AsyncLoop, TaskRunner
from fl.clock import Attempt
from strategies.asynchronous.base import Arrival, AsyncStrategy, Start
from strategies.base import ClientHook, Instruction
from transport.messages import TRAIN, Result, Task


@dataclass
class AsyncTrace:
    arrivals: list[tuple[float, int, int, float]] = field(default_factory=list)  # (time, client, staleness, value after)
    published: list[tuple[float, float]] = field(default_factory=list)  # (time, value) of each new version
    starts: list[tuple[float, int, dict]] = field(default_factory=list)  # (time the task begins, client, config)
    downloads: list[tuple[int, float]] = field(default_factory=list)  # (client, value it trains from) of each task
    batches: list[list[int]] = field(default_factory=list)  # the clients of each batch the loop trained together
    final: float = 0.0
    loop: AsyncLoop | None = None


class FixedTiming:
    """Always online, never failing; a task takes seconds_per_step[client] x its steps."""

    def __init__(self, seconds_per_step: Sequence[float], steps: int) -> None:
        self.seconds_per_step, self.steps = list(seconds_per_step), steps

    def online_idle(self, idle: np.ndarray, now: float, draw: int) -> np.ndarray:
        return idle

    def next_online(self, clients: np.ndarray, now: float) -> float:
        return now

    def attempt(self, number: int, instruction: Instruction, start: float) -> Attempt:
        steps = int(instruction.config.get("steps", self.steps))
        return Attempt(instruction.client_id, self.seconds_per_step[instruction.client_id] * steps)

    def downloaded(self, clients: Sequence[int]) -> None:
        pass


class QuadraticRunner(TaskRunner):
    """Closed-form local training of the quadratic clients, from the parameters current when a task is posted."""

    def __init__(self, strategy: AsyncStrategy, centers: Sequence[float], lr: float, steps: int,
                 samples: Sequence[int], trace: AsyncTrace) -> None:
        self.strategy, self.centers, self.lr, self.steps, self.samples = strategy, list(centers), lr, steps, samples
        self.current = torch.zeros(1, dtype=torch.float64)
        self.trace = trace

    def post(self, task: Task) -> tuple[Task, Tensor]:
        self.trace.downloads.append((task.client_id, float(self.current[0])))
        return task, self.current

    def run(self, handles: list[tuple[Task, Tensor]]) -> list[tuple[Result, int]]:
        self.trace.batches.append([task.client_id for task, _ in handles])
        return [(self._train(task, start), 0) for task, start in handles]

    def _train(self, task: Task, start: Tensor) -> Result:
        client, config = task.client_id, task.config
        steps, lr = int(config.get("steps", self.steps)), float(config.get("lr", self.lr))
        algorithm = self.strategy.client_algorithm
        hook = algorithm.start(start.clone(), {}, {}) if algorithm else ClientHook()
        x = start.clone()
        for _ in range(steps):
            grad = x - self.centers[client]
            hook.on_gradient(x, grad)
            x -= lr * grad
        loss = float(0.5 * (x - self.centers[client]) ** 2)
        return Result(TRAIN, task.version, client, self.samples[client], {"loss": loss, "steps": float(steps),
                                                                           "lr": lr}, x - start)


class _Recorder:
    """The strategy, with its arrivals and starts written down."""

    def __init__(self, strategy: AsyncStrategy, trace: AsyncTrace) -> None:
        self._strategy, self._trace = strategy, trace

    def __getattr__(self, name: str) -> Any:
        return getattr(self._strategy, name)

    def select(self, now: float, idle: np.ndarray, slots: int, rng: np.random.Generator) -> list[Start]:
        starts = self._strategy.select(now, idle, slots, rng)
        self._trace.starts += [(now + s.delay, s.client_id, dict(s.config)) for s in starts]
        return starts

    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> Tensor | None:
        new = self._strategy.on_arrival(arrival, global_params)
        value = float((global_params if new is None else new)[0])
        self._trace.arrivals.append((arrival.time, arrival.client_id, arrival.staleness, value))
        return new


def run_async(strategy: AsyncStrategy, centers: Sequence[float], seconds_per_step: Sequence[float], versions: int,
              *, lr: float = 0.5, steps: int = 1, x0: float = 0.0, samples: Sequence[int] | None = None
              ) -> AsyncTrace:
    """Run until `versions` versions are published (or nothing is left to happen); see the module docstring."""
    trace = AsyncTrace()
    runner = QuadraticRunner(strategy, centers, lr, steps, samples or [1] * len(centers), trace)

    def publish(params: Tensor) -> int:
        runner.current = params.detach().clone()
        if trace.loop is not None:
            trace.published.append((trace.loop.now, float(params[0])))
        return len(trace.published) + 1

    loop = AsyncLoop(_Recorder(strategy, trace), len(centers), torch.tensor([x0], dtype=torch.float64), publish,
                     runner, FixedTiming(seconds_per_step, steps), seed=0)  # type: ignore[arg-type]
    trace.loop = loop
    while len(trace.published) < versions and not loop.next_version().ended:
        pass
    trace.final = float(loop.params[0])
    return trace
