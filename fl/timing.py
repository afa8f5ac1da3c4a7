"""Virtual time of a run: when each selected client's task ends, from its device profile and a cost model that does
not depend on the channel, so gRPC and direct runs order events the same.

A task takes latency + download bytes / bandwidth down + samples processed x seconds per sample + upload bytes /
bandwidth up. The download is what the client would pay to hold the published version (the changes since the
version it holds, or the whole parameters: the ledger the channels keep, charged as they charge it, to the clients a
round keeps); the upload is the uplink codec's
payload for an update plus the tensors the strategy expects. Without device profiles every task is instantaneous
and every client always available, so the clock stays at 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fl.clock import Attempt, RoundSchedule, schedule_round
from fl.seeding import ASYNC_ONLINE, DROPOUT, SELECTION, derive_rng
from fl.training import TrainConfig, samples_processed
from simulations.profiles import Always, DeviceProfiles
from strategies.base import Instruction
from transport.downlink import Broadcast, DownloadLedger
from transport.messages import tensor_bytes


class TaskTiming:
    """Places each round's tasks on the virtual clock; `now` is the end of the last round, in virtual seconds."""

    def __init__(self, profiles: DeviceProfiles | None, seed: int, train_sizes: Sequence[int],
                 train_config: TrainConfig, upload_bytes: int) -> None:
        self.profiles, self.seed = profiles, seed
        self.train_sizes, self.train_config, self.upload_bytes = [int(n) for n in train_sizes], train_config, upload_bytes
        self.now = 0.0
        self._idle_until = 0.0  # where a round without tasks ends
        self.downloads = DownloadLedger()
        self._version, self._whole = 0, 0

    def published(self, version: int, broadcast: Broadcast) -> None:
        """A new version is out: what holding it costs each client from now on."""
        self._version, self._whole = version, tensor_bytes({"params": broadcast.params, **broadcast.state})
        self.downloads.published(version, None if broadcast.change is None else broadcast.change.nbytes(), self._whole)

    def online(self, round: int, candidates: np.ndarray) -> np.ndarray:
        """The candidates online at the round's start. When none is, a round without tasks lasts until the first of
        them may come online, so the clock never stands still."""
        self._idle_until = self.now
        if self.profiles is None or isinstance(self.profiles.availability, Always):
            return candidates  # (the draws below would change nothing; no other stream uses them)
        availability = self.profiles.availability
        online = [c for c in candidates.tolist()
                  if availability.online_at_selection(c, self.now, derive_rng(self.seed, SELECTION, round, c).random())]
        if not online and len(candidates):
            self._idle_until = min(availability.next_online(c, self.now) for c in candidates.tolist())
        return np.asarray(online, dtype=np.int64)

    def schedule(self, round: int, instructions: Sequence[Instruction], keep: int, deadline: float) -> RoundSchedule:
        """Start every instructed task now and keep the first `keep` arrivals within `deadline` (0: none); nothing
        changes until `advance`."""
        schedule = schedule_round(self.now, [self.attempt(round, i, self.now) for i in instructions], keep, deadline)
        if not instructions and math.isfinite(self._idle_until):
            schedule.end = self._idle_until
        return schedule

    def advance(self, schedule: RoundSchedule) -> None:
        """The round committed: its kept clients hold the version they trained on, and the clock moves to its end."""
        self.downloaded(schedule.kept)
        self.now = schedule.end

    def downloaded(self, clients: Sequence[int]) -> None:
        """These clients now hold the published version (they trained or evaluated on it), as the channels record."""
        for client in clients:
            self.downloads.charge(client, self._version, self._whole)

    def online_idle(self, idle: np.ndarray, now: float, draw: int) -> np.ndarray:
        """An asynchronous run's `draw`-th look at its idle clients: those online at `now` (one uniform draw each)."""
        if self.profiles is None or len(idle) == 0 or isinstance(self.profiles.availability, Always):
            return idle
        u = derive_rng(self.seed, ASYNC_ONLINE, draw).random(len(idle))
        return idle[self.profiles.availability.online_mask(idle, now, u)]

    def next_online(self, clients: np.ndarray, now: float) -> float:
        """The earliest time from `now` at which one of `clients` may be online (inf: none ever is)."""
        if self.profiles is None or len(clients) == 0:
            return now if len(clients) else math.inf
        return min(self.profiles.availability.next_online(int(c), now) for c in clients)

    def attempt(self, number: int, instruction: Instruction, start: float) -> Attempt:
        """A task that starts at `start`: the client's `number`-th (its round in a synchronous run), which keys
        whether it fails. Its download is what the client needs to hold the published version."""
        client = instruction.client_id
        download = self.downloads.cost(client, self._version, self._whole)
        if self.profiles is None:
            return Attempt(client, 0.0)
        samples = samples_processed(self.train_sizes[client], self.train_config.with_overrides(instruction.config))
        seconds = self.profiles.task_seconds(client, samples, download, self.upload_bytes)
        fails, point = derive_rng(self.seed, DROPOUT, number, client).random(2)
        if fails < self.profiles.dropout[client]:
            return Attempt(client, seconds, fails_at=point * seconds)
        if not self.profiles.availability.online_at_finish(client, start + seconds):
            return Attempt(client, seconds, fails_at=seconds)
        return Attempt(client, seconds)
