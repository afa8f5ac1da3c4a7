"""The Channel interface: how tasks reach workers and results reach the server, with bytes counted per client.

Server side: `publish` the global parameters of a version, `post` a task (returns an envelope that a worker can open),
`receive` what a worker's endpoint sent (its receipt). Worker side: an `Endpoint` opens envelopes and sends results.
An in-process channel, a Ray object channel and a gRPC channel all fit this shape, and every one of them passes what
arrives through the same `Admission`, the server's one validation step.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any

from torch import Tensor

from transport.downlink import Broadcast
from transport.messages import REFUSED, Result, Task


class UpdateRefused(ValueError):
    """The server refused a client's result (malformed, wrong shape or dtype, stale, ...)."""


class ValuesRefused(ValueError):
    """A well-formed result whose values the server refuses (an update above the norm bound, NaN or Inf): unlike a
    malformed one, it answers its task, as a failed one, so that one client's lie never stalls a round."""


def refused_result(result: Result) -> Result:
    """What the server keeps of a result whose values it refused: its task, failed."""
    return Result(REFUSED, result.version, result.client_id, result.num_samples, {})


class Admission(ABC):
    """The server's single validation step for what clients send, used by every channel. Each check raises
    ValueError naming what is wrong, and a refused result changes nothing on the server."""

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients

    def check_client(self, client_id: int) -> None:
        """ValueError unless `client_id` is one of this run's clients (0 .. num_clients - 1)."""
        if not 0 <= client_id < self.num_clients:
            raise ValueError(f"client id {client_id} is outside 0..{self.num_clients - 1}")

    @abstractmethod
    def upload_limit(self) -> int:
        """The most bytes one result may announce: what the model, the codec and the strategy allow."""

    @abstractmethod
    def admit(self, result: Result) -> Result:
        """The result with its update decoded, if every field is what the server expects; ValueError otherwise
        (ValuesRefused for values out of bounds). Only an admitted result moves the receiver's state (EF21's
        estimate of the client's update) forward."""

    def forget(self, client_id: int) -> None:
        """Drop the receiver's state of a client whose session was replaced (its new process starts afresh)."""


class Traffic:
    """Bytes moved per client and direction since the last `take`; thread-safe (a gRPC server counts as it sends)."""

    def __init__(self) -> None:
        self.down: dict[int, int] = defaultdict(int)
        self.up: dict[int, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add_down(self, client_id: int, num_bytes: int) -> None:
        with self._lock:
            self.down[client_id] += num_bytes

    def add_up(self, client_id: int, num_bytes: int) -> None:
        with self._lock:
            self.up[client_id] += num_bytes

    def take(self) -> tuple[dict[int, int], dict[int, int]]:
        """(down, up) per client, and start counting afresh."""
        with self._lock:
            down, up = dict(self.down), dict(self.up)
            self.down.clear()
            self.up.clear()
        return down, up


class Endpoint(ABC):
    """The worker side of a channel; must be picklable so it can travel to worker processes."""

    @abstractmethod
    def open(self, envelope: Any) -> tuple[Task, Tensor]:
        """The task and the global parameters it names."""

    @abstractmethod
    def send(self, result: Result) -> Any:
        """Send a result; returns the receipt the server passes to `Channel.receive`."""

    def open_many(self, envelopes: list[Any]) -> list[tuple[Task, Tensor]]:
        """`open` for several envelopes; a channel may do it in one call."""
        return [self.open(envelope) for envelope in envelopes]

    def send_many(self, results: list[Result]) -> list[Any]:
        """`send` for the results of the envelopes last opened together, in their order."""
        return [self.send(result) for result in results]


class Channel(ABC):
    """The server side of a channel."""

    def __init__(self) -> None:
        self.traffic = Traffic()
        self.admission: Admission | None = None  # set by the server once it knows the model and the strategy

    def admit_with(self, admission: Admission) -> None:
        """Validate everything that arrives from now on with `admission`."""
        self.admission = admission

    def accepted(self, result: Result) -> Result:
        """`result` validated and its update decoded (the step every channel applies on receipt); a result whose
        values are refused comes back as a REFUSED one."""
        if self.admission is None:
            raise RuntimeError("the server has not set the channel's admission")
        try:
            return self.admission.admit(result)
        except ValuesRefused:
            return refused_result(result)
        except ValueError as error:
            raise UpdateRefused(f"client {result.client_id}: the server refused the result: {error}") from None

    def cancel(self, envelope: Any) -> None:
        """A posted task will never run (an asynchronous run found it too stale to use)."""

    def keep_versions(self, max_staleness: int | None) -> None:
        """Accept results of tasks up to `max_staleness` versions old (None: any age); by default only the
        current version's. Versions no open task needs are dropped either way."""

    def connected(self) -> list[int] | None:
        """The clients that can be given tasks now, or None when every client can (a simulation)."""
        return None

    def close(self, abort_reason: str = "") -> None:
        """Release what the channel holds open (a server, a port); `abort_reason`: the run failed, and why (a
        channel with remote clients tells them)."""

    @abstractmethod
    def publish(self, version: int, broadcast: Broadcast) -> None:
        """Make the global parameters of `version` available to the tasks posted next; each task's client is
        counted for what it downloads: the changes since the version it holds, or the whole parameters."""

    @abstractmethod
    def post(self, task: Task) -> Any:
        """Hand a task over; returns the envelope a worker opens."""

    @abstractmethod
    def receive(self, receipt: Any) -> Result:
        """The result behind a worker's receipt."""

    @abstractmethod
    def endpoint(self) -> Endpoint:
        """A worker-side endpoint for this channel."""
