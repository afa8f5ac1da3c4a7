"""The Channel interface: how tasks reach workers and results reach the server, with bytes counted per client.

Server side: `publish` the global parameters of a version, `post` a task (returns an envelope that a worker can open),
`receive` what a worker's endpoint sent (its receipt). Worker side: an `Endpoint` opens envelopes and sends results.
An in-process channel, a Ray object channel and a gRPC channel all fit this shape.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any, Callable

from torch import Tensor

from transport.codecs.base import Payload
from transport.downlink import Broadcast
from transport.messages import Result, Task

UpdateDecoder = Callable[[int, Payload], Tensor]  # (client id, payload) -> update; ValueError if it is bad


class UpdateRefused(ValueError):
    """The server refused a client's result (malformed, wrong shape or dtype, NaN or Inf, stale, ...)."""


class Traffic:
    """Bytes moved per client and direction since the last `take`."""

    def __init__(self) -> None:
        self.down: dict[int, int] = defaultdict(int)
        self.up: dict[int, int] = defaultdict(int)

    def add_down(self, client_id: int, num_bytes: int) -> None:
        self.down[client_id] += num_bytes

    def add_up(self, client_id: int, num_bytes: int) -> None:
        self.up[client_id] += num_bytes

    def take(self) -> tuple[dict[int, int], dict[int, int]]:
        """(down, up) per client, and start counting afresh."""
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
        self.decode_update: UpdateDecoder | None = None  # set by the server once it knows the model's size

    def decoded(self, result: Result) -> Result:
        """`result` with its encoded update decoded (the step every channel applies on receipt)."""
        if not isinstance(result.update, Payload):
            return result
        if self.decode_update is None:
            raise RuntimeError("the server has not set the channel's update decoder")
        try:
            update = self.decode_update(result.client_id, result.update)
        except ValueError as error:
            raise UpdateRefused(f"client {result.client_id}: the server refused the update: {error}") from None
        return dataclasses.replace(result, update=update)

    def connected(self) -> list[int] | None:
        """The clients that can be given tasks now, or None when every client can (a simulation)."""
        return None

    def close(self) -> None:
        """Release what the channel holds open (a server, a port)."""

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
