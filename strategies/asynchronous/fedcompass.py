"""FedCompass (Li et al., ICLR 2024, "FedCompass: Efficient Cross-Silo Federated Learning on Heterogeneous Client
Devices using a Computing Power Aware Scheduler"), scheduler as in APPFL's `compass_scheduler.py`.

The server estimates each client's seconds per local step (an EMA) and gives it a step count Q in [Q_min, Q_max] so
that clients of similar progress arrive together, in an arrival group. A group is aggregated when its last member
arrives, or by its timer at the group's latest arrival time; late arrivals are buffered and join the next group
aggregation. Each aggregation adds the staleness-weighted updates (APPFL's gradient-based form, equal weights):

    x <- x + sum_j alpha * s(staleness_j) / N * update_j        (update = x_end - x_start, computed in float64)

staleness_j counts the versions published from the client's start to the aggregation: the arrival's staleness plus
the versions this strategy published since. Model buffers (entries after `num_trainable`, e.g. BatchNorm statistics)
take the plain mean of the received clients' values, as APPFL does. Mapping onto the contract: a Start's config
carries {"steps": Q}; a client waiting in its group is not started until the group aggregates; clients given a new
group are started, fastest first, by the next `select` (at the same virtual time). Deviations from APPFL: late
arrivals are all kept until the next group aggregation (APPFL keeps one per client), several groups due at one timer
make one version, and a client whose task was lost (dropout) leaves its group and gets a new one when it is idle again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from strategies.asynchronous.base import Arrival, AsyncStrategy, Start, check_concurrency
from strategies.asynchronous.staleness import parse_staleness
from strategies.base import Federation
from strategies.options import positive

MIN_SPEED = 1e-9  # seconds per step: clients that take no time (no device profiles) would divide by zero


@dataclass
class FedCompassConfig:
    """FedCompass: group clients by estimated speed so that each group arrives together (Li et al., ICLR 2024)."""

    concurrency: int = 0  # clients in flight at once; 0: every client (cross-silo: every client always works)
    steps_min: int = 20  # Q_min, the fewest local steps assigned
    steps_max: int = 100  # Q_max, the most local steps assigned
    speed_momentum: float = 0.9  # weight of the newest observation in the speed EMA
    latest_time_factor: float = 1.5  # lambda: a group's latest arrival time is lambda x its expected duration
    alpha: float = 0.9  # server step: alpha * s(staleness) / N per update
    staleness: str = "polynomial:a=0.5"  # s(tau): constant, polynomial:a=A or hinge:a=A,b=B

    def __post_init__(self) -> None:
        if self.concurrency < 0:
            raise ValueError(f"fedcompass: concurrency must be >= 0 (0: every client), got {self.concurrency}")
        if not 1 <= self.steps_min <= self.steps_max:
            raise ValueError(f"fedcompass: need 1 <= steps_min <= steps_max, got {self.steps_min}, {self.steps_max}")
        if not 0.0 <= self.speed_momentum <= 1.0:
            raise ValueError(f"fedcompass: speed_momentum must be in [0, 1], got {self.speed_momentum}")
        if not self.latest_time_factor >= 1.0:
            raise ValueError(f"fedcompass: latest_time_factor must be >= 1, got {self.latest_time_factor}")
        positive("fedcompass", "alpha", self.alpha)
        parse_staleness(self.staleness)

    def build(self, federation: Federation) -> FedCompass:
        return FedCompass(federation, self)


@dataclass
class Buffered:
    """An update waiting for aggregation; its staleness then is `offset` + versions published by then."""

    update: Tensor  # float64
    buffers: Tensor  # the client's final model-buffer values, float64
    offset: int


@dataclass
class Group:
    """An arrival group: members still expected, members arrived (waiting), and their buffered updates."""

    clients: list[int]
    expected: float
    latest: float
    arrived: list[int] = field(default_factory=list)
    buffer: list[Buffered] = field(default_factory=list)
    timer: bool = True  # its timer at `latest` has not fired


class FedCompass(AsyncStrategy):
    def __init__(self, federation: Federation, config: FedCompassConfig) -> None:
        self.config = config
        self.weight = parse_staleness(config.staleness)
        self.concurrency = check_concurrency(config.concurrency, federation.num_clients)
        self.num_clients, self.num_trainable = federation.num_clients, federation.num_trainable
        self.speed: dict[int, float] = {}  # seconds per local step
        self.steps: dict[int, int] = {}  # Q of the client's current (or next) task
        self.group_of: dict[int, int] = {}
        self.groups: dict[int, Group] = {}
        self.group_count = 0
        self.general: list[Buffered] = []  # late arrivals
        self.ready: list[int] = []  # clients to start, in order
        self.versions = 0  # versions this strategy published

    def select(self, now: float, idle: np.ndarray, slots: int, rng: np.random.Generator) -> list[Start]:
        """The ready clients that are idle; clients never started begin with Q_max, lost tasks are reassigned."""
        idle_set = {int(c) for c in idle}
        for c in sorted(idle_set - set(self.ready)):
            if c in self.group_of and c in self.groups[self.group_of[c]].arrived:
                continue  # waits for its group
            if c in self.speed:  # its task was lost: a new group
                self._leave(c)
                self.assign_group(c, now)
            else:  # never started (or its first task was lost): Q_max
                self.steps[c] = self.config.steps_max
                self.ready.append(c)
        chosen = [c for c in self.ready if c in idle_set][: max(slots, 0)]
        self.ready = [c for c in self.ready if c not in chosen]
        return [Start(c, {"steps": self.steps[c]}) for c in chosen]

    def on_arrival(self, arrival: Arrival, global_params: Tensor) -> Tensor | None:
        """First arrival: aggregate alone; late: buffer and restart at once; on time: wait for the group."""
        c, now = arrival.client_id, arrival.time
        obs = (now - arrival.start_time) / self.steps[c]
        m = self.config.speed_momentum
        self.speed[c] = max(obs if c not in self.speed else (1 - m) * self.speed[c] + m * obs, MIN_SPEED)
        entry = self._buffered(arrival)
        if c not in self.group_of:
            new = self._publish(self._aggregate(global_params, [entry]))
            self.assign_group(c, now)
            return new
        gid = self.group_of[c]
        group = self.groups[gid]
        if now > group.latest:
            self.general.append(entry)
            self._leave(c)
            self.assign_group(c, now)
            return None
        group.clients.remove(c)
        group.arrived.append(c)
        group.buffer.append(entry)
        return self._publish(self._group_aggregation(gid, now, global_params)) if not group.clients else None

    def next_timer(self) -> float | None:
        return min((g.latest for g in self.groups.values() if g.timer), default=None)

    def on_timer(self, now: float, global_params: Tensor) -> Tensor | None:
        """Aggregate every group whose latest time has come and that holds updates; one version for all of them."""
        new = None
        for _, gid in sorted((g.latest, gid) for gid, g in self.groups.items() if g.timer and g.latest <= now):
            self.groups[gid].timer = False
            if self.groups[gid].buffer:
                new = self._group_aggregation(gid, now, global_params if new is None else new)
        return None if new is None else self._publish(new)

    def _buffered(self, arrival: Arrival) -> Buffered:
        k = self.num_trainable
        buffers = arrival.start_params[k:].to(torch.float64) + arrival.update[k:].to(torch.float64)
        return Buffered(arrival.update.to(torch.float64, copy=True), buffers, arrival.staleness - self.versions)

    def _aggregate(self, global_params: Tensor, entries: list[Buffered]) -> Tensor:
        """x + sum_j alpha s(tau_j) / N update_j in float64; model buffers: the mean of the clients' values."""
        new = global_params.to(torch.float64, copy=True)
        for e in entries:
            new.add_(e.update, alpha=self.config.alpha * self.weight(e.offset + self.versions) / self.num_clients)
        if self.num_trainable < len(new):
            new[self.num_trainable :] = torch.stack([e.buffers for e in entries]).mean(0)
        return new.to(global_params.dtype)

    def _publish(self, new: Tensor) -> Tensor:
        self.versions += 1
        return new

    def _group_aggregation(self, gid: int, now: float, global_params: Tensor) -> Tensor:
        """Aggregate the general buffer and group `gid`'s, close the group, reassign its arrived clients."""
        group = self.groups[gid]
        new = self._aggregate(global_params, self.general + group.buffer)
        arrived = sorted(group.arrived, key=self.speed.__getitem__)  # fastest first
        self.general, group.arrived, group.buffer = [], [], []
        group.expected = group.latest = -math.inf
        group.timer = False
        if not group.clients:
            del self.groups[gid]
        for c in arrived:
            self.assign_group(c, now)
        return new

    def _leave(self, c: int) -> None:
        """Take `c` out of its group's expected members, deleting a group left with nobody."""
        gid = self.group_of.pop(c, None)
        if gid is not None:
            group = self.groups[gid]
            group.clients.remove(c)
            if not group.clients and not group.arrived:
                del self.groups[gid]

    def assign_group(self, c: int, now: float) -> None:
        """Assign `c` to a group (join one, else create one) and mark it ready to start."""
        if not self.join_group(c, now):
            self.create_group(c, now)
        self.ready.append(c)

    def join_group(self, c: int, now: float) -> bool:
        """Join the open group that gives the largest step count in [Q_min, Q_max] (ties: the newest group)."""
        best, best_steps = None, -1
        for gid, group in self.groups.items():
            if group.expected > now:
                steps = math.floor((group.expected - now) / self.speed[c])
                if self.config.steps_min <= steps <= self.config.steps_max and steps >= best_steps:
                    best, best_steps = gid, steps
        if best is None:
            return False
        self.groups[best].clients.append(c)
        self.group_of[c], self.steps[c] = best, best_steps
        return True

    def create_group(self, c: int, now: float) -> None:
        """A new group, timed to arrive about when the fastest member of an open group would finish a second task."""
        q_min, q_max = self.config.steps_min, self.config.steps_max
        steps = -1
        for group in self.groups.values():
            if now < group.latest:
                fastest = min(self.speed[j] for j in group.clients + group.arrived)
                candidate = math.floor((group.latest + fastest * q_max - now) / self.speed[c])
                if candidate <= q_max:
                    steps = max(steps, candidate)
        steps = q_max if steps < 0 else max(steps, q_min)
        duration = steps * self.speed[c]
        self.groups[self.group_count] = Group([c], now + duration, now + duration * self.config.latest_time_factor)
        self.group_of[c], self.steps[c] = self.group_count, steps
        self.group_count += 1
